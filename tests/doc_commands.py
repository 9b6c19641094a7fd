"""How each command of the docs runs in the test suite (tests/test_docs.py), in one place.

`Run`: the documented command itself, in a copy of the project with small stand-ins for the course's
data and weights (tests/standins.py), with `append`ed flags that make it tiny (argparse keeps the last
value of a flag, so an appended `--steps 2` overrides the documented one) and `before` commands that
make its inputs. `Instead`: a command that needs what no test machine has (the course's real weights, a
GPU, hours of training): why, and the tiny command that runs the same code path instead. `Covered`: a
command another test already runs end to end on stand-ins (and checks more closely), named here so that
the suite does not run it twice.
"""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Run:
    append: str = ""                     # flags appended to the documented command
    before: tuple = ()                   # commands run first, in the same copy of the project
    env: dict = field(default_factory=dict)
    creates: tuple = ()                  # paths (relative to the project) that must exist afterwards
    prints: tuple = ()                   # text its output must hold
    may_skip: bool = False               # a --skip-missing "skipped, missing ..." line is expected


@dataclass(frozen=True)
class Instead:
    why: str
    command: str
    before: tuple = ()
    env: dict = field(default_factory=dict)
    creates: tuple = ()
    prints: tuple = ()
    may_skip: bool = False


@dataclass(frozen=True)
class Covered:
    why: str
    by: str                              # "tests/FILE.py::test_name": a test that runs this command on stand-ins


# placeholders of the docs, made concrete in the copy of the project
PLACEHOLDERS = {"OUT_DIR": "outputs/doc_out", "NOISE_DIR": "hw2_data/face/noise", "UNET_PATH": "hw2_data/face/UNet.pt"}

# tiny settings and the runs other commands start from
P1_TINY = "--steps 2 --n-feat 8 --limit 40 --num-timesteps 50 --batch-size 8 --keep-every 1 --dtype fp32"
P1_TRAIN = f"python p1_ddpm_train.py --data-root hw2_data/digits --out-dir runs/p1 {P1_TINY}"
DISTIL_TINY = "--steps 2 --limit 40 --batch-size 8 --keep-every 1 --dtype fp32"
TEACHER_PT = "cp runs/p1/model.pt teacher.pt"  # the docs' teacher.pt (git show 931e3ae:...): a tiny guided network
GPU_CHECK = ('OUT=runs/p1_gpu_check TEACHER_ARGS="--n-feat 16 --steps 2 --limit 64 --batch-size 8" '
             'STUDENT_ARGS="--steps 2 --limit 64 --batch-size 8" bash tools/p1_teacher_gpu.sh')
SD = "--resolution 32 --steps 2 --quiet"
TI_TRAIN = ("python p3_textual_inversion.py train hw2_data/textual_inversion/{0} hw2_data/sd-v1-4.ckpt --token '{1}' "
            "--initializer {2} --batch-size 1 " + SD)
TI_NEW1, TI_NEW2, TI_NEW3 = (TI_TRAIN.format(*a) for a in (("0", "<new1>", "dog"), ("1", "<new2>", "painting"),
                                                            ("2", "<new3>", "cat")))
TI_GENERATE = "python p3_textual_inversion.py generate hw2_data/textual_inversion/input.json outputs/p3_ti " \
              "hw2_data/sd-v1-4.ckpt --steps 2 --resolution 32 --batch-size 25 --quiet"
CD_TINY = "--num-class-images 2 --reg-steps 2 --batch-size 1 " + SD
CD_TRAIN = ("python p3_custom_diffusion.py train {folders} hw2_data/sd-v1-4.ckpt --tokens {tokens} --class-words {words} "
            "--out-dir runs/p3_custom_diffusion/{out} " + CD_TINY)
CD_JOINT = CD_TRAIN.format(folders="hw2_data/textual_inversion/0 hw2_data/textual_inversion/2",
                           tokens="'<new1>' '<new3>'", words="dog cat", out="joint")
CD_NEW1 = CD_TRAIN.format(folders="hw2_data/textual_inversion/0", tokens="'<new1>'", words="dog", out="new1")
CD_NEW3 = CD_TRAIN.format(folders="hw2_data/textual_inversion/2", tokens="'<new3>'", words="cat", out="new3")
PROMPTS = """printf '%s' '{"0": {"token_name": "<new1>", "prompt": ["a <new1> next to a <new3>"]}}' > prompts.json"""
P1_DATA = "mkdir hw2_p1 && ln -s ../hw2_data/digits hw2_p1/"  # run_all.sh on P1 alone (the others run above)
RUN_ALL_ENV = {"HW2_DATA": "hw2_p1", "HW2_PER_DIGIT": "1", "HW2_TRAIN_STEPS": "2", "HW2_KEEP_EVERY": "1",
               "HW2_P1_TRAIN_FLAGS": "--n-feat 8 --limit 40 --num-timesteps 50 --batch-size 8",
               "HW2_JUDGE_FLAGS": "--limit 64 --epochs 1 --width 8 --batch-size 16", "HW2_CURVE_PER_DIGIT": "1",
               "HW2_MNISTM_CLASSIFIER": "Classifier.pth", "HW2_PLAN_FORWARDS": "10"}
BENCH_OUT = "--out outputs/bench.json"

COMMANDS = {
    # --------------------------------------------------------------------------------- the two commands
    "bash run_all.sh": Run(before=(P1_DATA,), env=RUN_ALL_ENV, may_skip=True,
                           creates=("outputs/report.md", "outputs/p1/grid_svhn.png", "outputs/p1/eval.json")),
    "bash run_all.sh --train": Covered("trains, samples, scores and reports with tiny settings",
                                       "tests/test_report.py::test_run_all_train_end_to_end"),
    "bash run_tests.sh": Instead("it is the command that runs this suite: run here, it would start itself",
                                 "bash run_tests.sh --collect-only -q -n 0", prints=("tests/test_docs.py",)),
    "python report.py outputs": Run(before=("bash hw2_1.sh outputs/p1 --per-digit 1",),
                                    creates=("outputs/report.md",), prints=("report: outputs/report.md",)),
    # ------------------------------------------------------------------------------------------------ P1
    "python p1_ddpm_train.py --data-root hw2_data/digits --out-dir runs/p1":
        Run(append=P1_TINY, creates=("runs/p1/model.pt", "runs/p1/last.pt", "runs/p1/train_log.jsonl")),
    "python p1_ddpm_train.py --data-root hw2_data/digits --out-dir runs/p1 --keep-every 1500":
        Run(append=P1_TINY, creates=("runs/p1/model_000002.pt",)),
    "python p1_ddpm_train.py --data-root hw2_data/digits --out-dir runs/p1_cpu --n-feat 64 --batch-size 128 "
    "--steps 10500 --keep-every 500": Run(append=P1_TINY, creates=("runs/p1_cpu/model.pt",)),
    "python p1_ddpm_train.py --recipe cpu --data-root hw2_data/digits --out-dir runs/p1_cpu":
        Run(append=P1_TINY, creates=("runs/p1_cpu/model.pt",), prints=("recipe cpu",)),
    "bash hw2_1.sh outputs/p1_cpu --ckpt runs/p1_cpu/model.pt":
        Run(before=("python p1_ddpm_train.py --recipe cpu --data-root hw2_data/digits --out-dir runs/p1_cpu "
                    + P1_TINY,), append="--per-digit 1", creates=("outputs/p1_cpu/svhn/9_001.png",)),
    "python p1_ddpm_train.py --data-root hw2_data/digits --out-dir runs/p1_gd --distill-guidance runs/p1/model.pt "
    "--steps 1600 --batch-size 64 --lr 1e-4 --warmup 50 --ema-decay 0.995":
        Run(before=(P1_TRAIN,), append=DISTIL_TINY, creates=("runs/p1_gd/model.pt",)),
    "python p1_ddpm_train.py --data-root hw2_data/digits --out-dir runs/p1_sd2 --distill-steps runs/p1_gd/model.pt "
    "--student-steps 2 --w-range 2 4 --steps 2000 --batch-size 64 --lr 1e-4 --warmup 50 --ema-decay 0.995":
        Run(before=(P1_TRAIN, "python p1_ddpm_train.py --data-root hw2_data/digits --out-dir runs/p1_gd "
                              f"--distill-guidance runs/p1/model.pt {DISTIL_TINY}"),
            append=DISTIL_TINY, creates=("runs/p1_sd2/model.pt",)),
    "python p1_ddpm_train.py --data-root hw2_data/digits --out-dir runs/p1_gd --distill-guidance teacher.pt "
    "--steps 1600 --batch-size 64 --lr 1e-4 --warmup 50 --ema-decay 0.995 --keep-every 400 --bf16 auto":
        Run(before=(P1_TRAIN, TEACHER_PT), append=DISTIL_TINY, creates=("runs/p1_gd/model.pt",)),
    "python p1_ddpm_train.py --data-root hw2_data/digits --out-dir runs/p1_sd2 --distill-steps checkpoints/p1_ddpm.pt "
    "--student-steps 2 --w-range 2 4 --steps 2000 --batch-size 64 --lr 1e-4 --warmup 50 --ema-decay 0.995 "
    "--keep-every 500 --bf16 auto": Run(append=DISTIL_TINY, creates=("runs/p1_sd2/model.pt",)),
    "accelerate launch --multi_gpu --num_processes 4 p1_ddpm_train.py --data-root hw2_data/digits --out-dir runs/p1 "
    "--batch-size 64": Instead("four GPUs", "accelerate launch --cpu --num_processes 1 p1_ddpm_train.py --data-root "
                                           f"hw2_data/digits --out-dir runs/p1 {P1_TINY}", creates=("runs/p1/model.pt",)),
    "python p1_ddpm_sample.py outputs/p1 --ckpt runs/p1/model.pt --grid --reverse-process":
        Run(before=(P1_TRAIN,), append="--per-digit 1",
            creates=("outputs/p1/grid_mnistm.png", "outputs/p1/reverse_process_svhn.png", "outputs/p1/svhn/9_001.png")),
    "bash hw2_1.sh outputs/p1": Run(append="--per-digit 1", creates=("outputs/p1/mnistm/0_001.png",
                                                                     "outputs/p1/sampling.json")),
    "python p1_ddpm_eval.py outputs/p1 --mnistm-classifier Classifier.pth":
        Run(before=("bash hw2_1.sh outputs/p1 --per-digit 1",), creates=("outputs/p1/eval.json",)),
    "bash tools/p1_teacher_gpu.sh": Instead("hours of training on a GPU; its tiny run is the documented check "
                                            "command below (OUT=runs/p1_gpu_check ...), run as written",
                                            "bash -n tools/p1_teacher_gpu.sh"),
    GPU_CHECK: Run(creates=("runs/p1_gpu_check/teacher/model.pt", "runs/p1_gpu_check/student/model.pt")),
    "bash hw2_1.sh outputs/p1_gpu --ckpt runs/p1_gpu/student/model.pt --bf16 off":
        Run(before=(GPU_CHECK.replace("runs/p1_gpu_check", "runs/p1_gpu"),), append="--per-digit 1",
            creates=("outputs/p1_gpu/svhn/5_001.png",)),
    "python p1_ddpm_eval.py outputs/p1_gpu": Run(before=("bash hw2_1.sh outputs/p1_gpu --per-digit 1",),
                                                 creates=("outputs/p1_gpu/eval.json",)),
    "python -m utils.digits_pack pack hw2_data/digits digits_pack": Run(creates=("digits_pack",)),
    "python -m utils.digits_pack unpack digits_pack hw2_data/digits":
        Run(before=("python -m utils.digits_pack pack hw2_data/digits digits_pack", "mv hw2_data/digits digits_orig"),
            creates=("hw2_data/digits/svhn/train.csv",)),
    # ------------------------------------------------------------------------------------------------ P2
    "bash hw2_2.sh hw2_data/face/noise outputs/p2 hw2_data/face/UNet.pt":
        Covered("the grader's command on a small random UNet", "tests/test_p2_cli.py::test_hw2_2_sh_passes_its_arguments"),
    "python p2_ddim.py hw2_data/face/noise outputs/p2 hw2_data/face/UNet.pt --gt-dir hw2_data/face/GT --eta-sweep "
    "--interpolation --compare-conventions":
        Run(append="--steps 2", creates=("outputs/p2/mse.json", "outputs/p2/eta_sweep.png", "outputs/p2/eta_sweep.json",
                                         "outputs/p2/interpolation.png", "outputs/p2/interpolation.json",
                                         "outputs/p2/interpolation_stats.png", "outputs/p2/conventions.png")),
    "python p2_ddim.py hw2_data/face/noise outputs/p2 hw2_data/face/UNet.pt --compare-conventions":
        Run(append="--steps 2", creates=("outputs/p2/conventions.json",)),
    # ------------------------------------------------------------------------------------------------ P3
    "python p3_clip_zeroshot.py hw2_data/clip_zeroshot/val hw2_data/clip_zeroshot/id2label.json outputs/p3_clip":
        Run(append="--model tests/fixtures/tiny_clip.json --pretrained tiny_clip.pt",
            creates=("outputs/p3_clip/results.json", "outputs/p3_clip/cases.png")),
    "python p3_textual_inversion.py train hw2_data/textual_inversion/0 hw2_data/sd-v1-4.ckpt --token '<new1>' "
    "--initializer dog": Run(append="--batch-size 1 " + SD,
                             creates=("checkpoints/p3_textual_inversion/new1.safetensors",)),
    "bash hw2_3.sh hw2_data/textual_inversion/input.json outputs/p3_ti hw2_data/sd-v1-4.ckpt":
        Covered("the grader's command with a tiny SD and trained embeddings",
                "tests/test_p3_textual_inversion.py::test_hw2_3_sh_writes_the_graded_layout"),
    "python p3_textual_inversion.py evaluate hw2_data/textual_inversion/input.json outputs/p3_ti --concept-root "
    "hw2_data/textual_inversion --clip hw2_data/clip-vit-base-patch32 --json outputs/p3_ti_scores.json":
        Run(before=(TI_NEW1, TI_NEW2, TI_GENERATE), append="--device cpu", creates=("outputs/p3_ti_scores.json",)),
    "python p3_textual_inversion.py figure hw2_data/sd-v1-4.ckpt outputs/p3_multi_concept.png --tokens '<new1>' "
    "'<new3>'": Run(before=(TI_NEW1, TI_NEW3), append="--num 1 --tile 32 " + SD,
                    creates=("outputs/p3_multi_concept.png",)),
    "python p3_custom_diffusion.py train hw2_data/textual_inversion/0 hw2_data/textual_inversion/2 "
    "hw2_data/sd-v1-4.ckpt --tokens '<new1>' '<new3>' --class-words dog cat --out-dir runs/p3_custom_diffusion/joint":
        Run(append=CD_TINY, creates=("runs/p3_custom_diffusion/joint/config.json",)),
    "python p3_custom_diffusion.py merge runs/p3_custom_diffusion/new1 runs/p3_custom_diffusion/new3 "
    "hw2_data/sd-v1-4.ckpt --out-dir runs/p3_custom_diffusion/merged":
        Run(before=(CD_NEW1, CD_NEW3), append="--quiet", creates=("runs/p3_custom_diffusion/merged/config.json",)),
    "python p3_custom_diffusion.py generate prompts.json outputs/p3_cd hw2_data/sd-v1-4.ckpt --weights "
    "runs/p3_custom_diffusion/joint": Run(before=(PROMPTS, CD_JOINT), append="--batch-size 25 " + SD,
                                          creates=("outputs/p3_cd/0/0/24.png",)),
    "python p3_custom_diffusion.py figure hw2_data/sd-v1-4.ckpt outputs/p3_cd_comparison.png --tokens '<new1>' "
    "'<new3>'": Run(before=(TI_NEW1, TI_NEW3, CD_JOINT),  # the joint run stands in for the merged one too
                    append="--merged runs/p3_custom_diffusion/joint --num 1 --tile 32 " + SD,
                    creates=("outputs/p3_cd_comparison.png",)),
    # ---------------------------------------------------------------------------------------- benchmarks
    "python benchmarks/bench_p1_sampling.py": Run(append=f"--per-digit 1 --dtype fp32 --unit-forwards 20 {BENCH_OUT}",
                                                  creates=("outputs/bench.json",)),
    "python benchmarks/bench_p1_training.py": Covered("the same benchmark on tiny settings, its JSON and plot checked",
                                                      "tests/test_p1_cpu_recipe.py::test_training_benchmark_end_to_end"),
    "python benchmarks/bench_p1_training.py --recipe cpu --units 60 --bf16 off":
        Covered("the same benchmark on tiny settings, its JSON and plot checked",
                "tests/test_p1_cpu_recipe.py::test_training_benchmark_end_to_end"),
    "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bench_p1_training.py --recipe cpu --units 60 "
    "--bf16 off": Covered("the same benchmark on tiny settings (the variables only pick torch's kernels)",
                          "tests/test_p1_cpu_recipe.py::test_training_benchmark_end_to_end"),
    "python benchmarks/bench_p1_train_step.py": Run(
        append=f"--steps 1 --warmup 1 --no-compile --unit-forwards 2 {BENCH_OUT}", creates=("outputs/bench.json",)),
    "python benchmarks/bench_p1_train_step.py --bf16": Covered(
        "the same benchmark in bf16 on tiny settings, its layouts and JSON checked",
        "tests/test_p1_cpu_recipe.py::test_train_step_benchmark_times_each_layout_against_the_first"),
    "python benchmarks/bench_p1_quality.py --ckpt runs/p1/model_*.pt":
        Run(before=(P1_TRAIN,), append=f"--per-digit 1 --steps 2 --mnistm-classifier Classifier.pth {BENCH_OUT}",
            creates=("outputs/bench.json",)),
    "python benchmarks/bench_p1_quality.py --ckpt teacher.pt --sampler unipc --steps 4 5 --guidance 2 2.5 3 3.5 4 "
    "--per-digit 50 --seed 0 1 2 --dtype bf16":
        Run(before=(P1_TRAIN, TEACHER_PT), append=f"--steps 2 --guidance 3 --seed 0 --per-digit 1 --dtype fp32 "
                                      f"--mnistm-classifier Classifier.pth {BENCH_OUT}", creates=("outputs/bench.json",)),
    "python benchmarks/bench_p2_ddim.py": Run(append=f"--size 32 --steps 2 --repeats 1 --num-images 1 --no-gpu {BENCH_OUT}",
                                              creates=("outputs/bench.json",)),
    "python benchmarks/bench_p2_ddim.py --unet hw2_data/face/UNet.pt --noise-dir hw2_data/face/noise":
        Run(append=f"--steps 2 --repeats 1 --num-images 1 --no-gpu {BENCH_OUT}", creates=("outputs/bench.json",)),
    "python benchmarks/bench_p3_clip.py": Run(append=f"--model tests/fixtures/tiny_clip.json --batch-sizes 2 --iters 1 "
                                                     f"--num-classes 5 {BENCH_OUT}", creates=("outputs/bench.json",)),
    "python benchmarks/bench_p3_clip.py --threads 1":
        Run(append=f"--model tests/fixtures/tiny_clip.json --batch-sizes 2 --iters 1 --num-classes 5 {BENCH_OUT}",
            creates=("outputs/bench.json",)),
    "python benchmarks/bench_p3_textual_inversion.py": Run(append=f"--skip-gpu --train-steps 1 --sample-steps 1 "
                                                                  f"{BENCH_OUT}", creates=("outputs/bench.json",)),
    "python benchmarks/bench_p3_custom_diffusion.py --skip-gpu --threads 1":
        Run(append=f"--train-steps 1 --sample-steps 1 {BENCH_OUT}", creates=("outputs/bench.json",)),
    "python benchmarks/bench_training.py --data-root hw2_data/digits --limit 300":
        Run(append=f"--steps 2 --warmup 1 --n-feat 8 --batch-size 8 {BENCH_OUT}", creates=("outputs/bench.json",)),
}

# the longest (20-60 s on 2 cores): started first by run_tests.sh's workers (tests/conftest.py)
HEAVY = {"bash run_all.sh",
         "python p3_custom_diffusion.py figure hw2_data/sd-v1-4.ckpt outputs/p3_cd_comparison.png --tokens '<new1>' "
         "'<new3>'"}
assert HEAVY <= set(COMMANDS)
