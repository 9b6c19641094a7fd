"""The report's generated observations follow the numbers: made-up measurements in both directions give
sentences that say opposite things, and every number in a sentence is one of the measurement's."""
import math
import re

import pytest

from utils.observations import clip_sentences, eta_sentences, interpolation_sentences, trend, two_concept_sentences


@pytest.mark.parametrize("values, word", [([0, 1, 2, 5], "increases"), ([5, 2, 1, 0], "decreases"),
                                          ([1, 1, 1], "stays flat"), ([0, 3, 1, 4], "does not change monotonically")])
def test_trend_words(values, word):
    assert trend(values) == word


def sweep(mean_from: list[float]) -> dict:
    """An eta_sweep.json with 5 etas and 2 noises whose distances from eta 0 are `mean_from` (both noises)."""
    etas = [0.0, 0.25, 0.5, 0.75, 1.0]
    between = [abs(b - a) for a, b in zip(mean_from, mean_from[1:])]
    return {"etas": etas, "noises": ["00", "01"], "reference_eta": 0.0, "pixel_scale": "0-255",
            "mad_from_eta0": [[m, m] for m in mean_from], "mad_between_rows": [[d, d] for d in between],
            "mean_from_eta0": mean_from, "mean_between_rows": between, "perceptual": None}


def test_eta_sentence_flips_with_the_numbers():
    rising = " ".join(eta_sentences(sweep([0.0, 4.0, 7.5, 10.0, 12.25])))
    falling = " ".join(eta_sentences(sweep([0.0, 12.25, 10.0, 7.5, 4.0])))
    assert "it increases with eta" in rising and "For 2 of the 2 noises it increases" in rising
    assert "further the face moves" in rising
    assert "it does not change monotonically with eta" in falling and "For 0 of the 2 noises" in falling
    assert "does not grow steadily" in falling and "further the face moves" not in falling
    # the numbers are the measurement's, as printed
    assert "0.0, 4.0, 7.5, 10.0, 12.2" in rising and "between eta 0.00 and 0.25" in rising


def interp(lin_mid_rms: float, lin_contrast_mid: float) -> dict:
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    dip = [1.0, (1 + lin_mid_rms) / 2, lin_mid_rms, (1 + lin_mid_rms) / 2, 1.0]
    return {"alphas": alphas, "noise_rms_ends": 1.0,
            "noise_rms": {"slerp": [1.0] * 5, "linear": dip},
            "contrast": {"slerp": [50.0] * 5, "linear": [50.0, (50 + lin_contrast_mid) / 2, lin_contrast_mid,
                                                         (50 + lin_contrast_mid) / 2, 50.0]},
            "saturation": {"slerp": [0.3] * 5, "linear": [0.3, 0.25, 0.2, 0.25, 0.3]}}


def test_interpolation_sentences_flip_with_the_numbers():
    washed = " ".join(interpolation_sentences(interp(1 / math.sqrt(2), 20.0)))
    assert "linear 0.707, slerp 1.000" in washed and "0.71 of the norm it was trained on" in washed
    assert "its contrast falls to 20.0 at alpha 0.50, where slerp's is 50.0" in washed
    same = " ".join(interpolation_sentences(interp(0.98, 60.0)))
    assert "does not separate the two interpolations" in same and "trained on" not in same
    assert "the linear row is not flatter than slerp's: at its lowest (alpha 0.00) its contrast is 50.0" in same
    assert "its contrast falls to" not in same


def test_clip_sentences_follow_the_accuracies():
    base = {"prompting": {"single": {"template": "A photo of {object}.", "accuracy": 0.6}, "ensemble":
                          {"templates": 7, "accuracy": 0.65}},
            "confused_pairs": [{"true_label": "seal", "pred_label": "otter", "count": 4}]}
    up = " ".join(clip_sentences(base))
    assert "raises the accuracy: 0.6000 with the single prompt" in up and "0.6500 with the ensemble" in up
    assert "seal taken for otter (4x)" in up
    base["prompting"]["ensemble"]["accuracy"] = 0.55
    assert "lowers the accuracy" in " ".join(clip_sentences(base))
    base["prompting"]["ensemble"]["accuracy"] = 0.6
    assert "leaves unchanged the accuracy" in " ".join(clip_sentences(base))


def test_two_concept_sentences_name_the_method_that_holds_both():
    def method(a, b, text):
        return {"image_sim": {"<new1>": a, "<new3>": b}, "text_sim": text, "n_images": 4}
    data = {"prompt": "a <new1> next to a <new3>", "concepts": ["<new1>", "<new3>"],
            "methods": {"textual_inversion": method(0.80, 0.40, 0.25), "custom_diffusion_joint": method(0.70, 0.65, 0.30),
                        "custom_diffusion_merged": method(0.60, 0.55, 0.28)}}
    text = " ".join(two_concept_sentences(data))
    assert "textual inversion: image similarity 0.80 to <new1>'s photos and 0.40 to <new3>'s" in text
    assert "<new1> dominates (0.80 against 0.40 for <new3>)" in text
    assert "Custom Diffusion (joint) does best (0.65)" in text and "highest (0.30)" in text
    # reversed: textual inversion now holds both best and follows the prompt best
    data["methods"]["textual_inversion"] = method(0.75, 0.72, 0.35)
    text = " ".join(two_concept_sentences(data))
    assert "textual inversion does best (0.72)" in text and "Following the prompt (text similarity): textual " \
           "inversion is highest (0.35)" in text


def test_every_number_in_the_eta_sentences_is_measured():
    data = sweep([0.0, 3.3, 6.6, 9.9, 13.2])
    measured = {round(x, 1) for row in data["mad_from_eta0"] + data["mad_between_rows"] for x in row}
    measured |= {round(x, 2) for x in data["etas"]} | {round(x, 1) for x in data["mean_between_rows"]}
    for number in re.findall(r"\d+\.\d+", " ".join(eta_sentences(data))):
        assert round(float(number), 2) in measured or round(float(number), 1) in measured, number
