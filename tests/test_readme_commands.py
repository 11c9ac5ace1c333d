"""README.md's command blocks, run in order as written, on tiny settings.

Every ``bash`` block of the README is read and its commands run in one
scratch directory, in the README's order, so a later command finds what an
earlier one wrote (``runs/classify`` for the export and the fine-tune).
Two kinds of change are made, and listed here so that nothing else is:

* training commands get ``TINY`` flags appended (one short epoch);
* ``/tmp/check`` becomes a directory of the test's own.

The set-up steps of a ``&&`` chain (making and activating ``.venv``,
``pip install``) are dropped: the test's environment already has them.
A command the README shows again (the main job, in the set-up line and in
"Run the main job") runs once: its second run in the same folder would only
resume a finished run, which tests/test_train_settings.py checks.
Other commands are skipped by ``SKIPPED`` alone: the test command
itself, data or weights from outside
(ImageNet, CIFAR, the timm hub, a Detectron file, COCO, Kinetics), and the
detection and video main jobs, which their own tests run
(tests/test_detection_train.py, tests/test_video_train.py).  Of the study
commands only the first runs, with one norm (GN): the studies' tables, figures
and resume are checked in tests/test_study.py.
"""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--epochs=1 --steps_per_epoch=2 --eval_steps=1"
TRAINING = ("gn_keras.train.classify", "gn_keras.train.finetune", "gn_keras.train.study")
SETUP_STEPS = re.compile(r"^(python3? -m venv |\. \S*/bin/activate$|pip install)")
SKIPPED = (
    re.compile(r"pytest"),
    re.compile(r"/data/|tfds:|hub:|\.pkl|\.\.\.|--preset=paper_"),
    re.compile(r"^gn-(detect|video)\b"),
)


def readme_commands():
    """The README's commands in order: continuation lines joined, comments dropped."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        blocks = re.findall(r"```bash\n(.*?)```", handle.read(), re.S)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def runnable(commands, scratch):
    """The commands this test runs, with the changes the module docstring lists."""
    chosen, studies, seen = [], 0, set()
    for command in commands:
        if any(pattern.search(command) for pattern in SKIPPED):
            continue
        command = " && ".join(
            step for step in command.split(" && ") if not SETUP_STEPS.match(step.strip())
        )
        if not command or command in seen:
            continue
        seen.add(command)
        if "gn_keras.train.study" in command:
            studies += 1
            if studies > 1:
                continue
            command += " --study_norms=gn --out_dir=runs/study"
        if any(module in command for module in TRAINING) or command.startswith("gn-train"):
            command += f" {TINY}"
        chosen.append(command.replace("/tmp/check", os.path.join(scratch, "check")))
    return chosen


def test_the_rules_keep_the_readme_path_of_a_newcomer():
    every = readme_commands()
    commands = runnable(every, "/scratch")
    assert commands[0] == f"python -m gn_keras.train.classify {TINY}"
    main_job = [c for c in every if c.endswith("python -m gn_keras.train.classify")]
    assert len(main_job) == 2 and commands.count(commands[0]) == 1  # shown twice, run once
    scripts = " ".join(commands)
    for expected in (
        "gn_keras.train.export",
        "saved_model_cli run",
        "gn_keras.train.finetune",
        "gn_keras.train.study --study=norms",
        "from PIL import Image",
    ):
        assert expected in scripts, expected


def test_readme_commands_run_in_order(tmp_path):
    scratch = str(tmp_path)
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for command in runnable(readme_commands(), scratch):
        if command.startswith("python "):
            command = sys.executable + command[len("python") :]
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=scratch,
            capture_output=True,
            text=True,
            timeout=600,
            env=environment,
        )
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert os.path.exists(os.path.join(scratch, "exported", "saved_model", "saved_model.pb"))
    assert os.path.exists(os.path.join(scratch, "runs", "finetuned", "results.json"))
