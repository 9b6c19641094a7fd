"""Judges for P1 samples: the course's MNIST-M classifier and the project's SVHN classifier.

Both take 28x28 RGB normalised with mean 0.5 and std 0.5 per channel (`normalise`).
"""
import torch
import torch.nn.functional as F
from torch import nn


def normalise(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, 3, 28, 28) uint8 -> float in [-1, 1]: ToTensor then Normalize(0.5, 0.5), as the course."""
    return images_uint8.float() / 255.0 * 2 - 1


class CourseClassifier(nn.Module):
    """The course's LeNet-style MNIST-M judge (`Classifier.pth`, keys conv1, conv2, fc1, fc2, fc3)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(256, 128), nn.Linear(128, 64), nn.Linear(64, 10)

    def forward(self, x):                                   # (B, 3, 28, 28)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)          # (B, 6, 12, 12)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)          # (B, 16, 4, 4)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


def _block(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SvhnJudge(nn.Module):
    """A small VGG-style digit classifier trained by `p1_svhn_classifier_train.py`."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(_block(3, w), _block(w, w), nn.MaxPool2d(2),          # 14x14
                                      _block(w, 2 * w), _block(2 * w, 2 * w), nn.MaxPool2d(2),  # 7x7
                                      _block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * w, 10))
        self.width = width

    def forward(self, x):
        return self.head(self.features(x))


@torch.no_grad()
def predict(model: nn.Module, images_uint8: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted digits (N,) of (N, 3, 28, 28) uint8 images."""
    model.eval()
    return torch.cat([model(normalise(images_uint8[i:i + batch_size])).argmax(1)
                      for i in range(0, len(images_uint8), batch_size)])
