"""The Makefile's targets, the pinned requirements, the scripts' --help and their imports match the code."""

import ast
import importlib
import re
import subprocess
import sys
from importlib.metadata import packages_distributions

import pytest

from conftest import REPO

# Pinned although never imported by name: what uses them.
USED_WITHOUT_IMPORT = {"onnxscript": "torch.onnx.export(dynamo=True) in export_onnx.py",
                       "pytest": "runs the test suite"}


def makefile_rules() -> tuple[set[str], dict[str, list[str]]]:
    phony, recipes, target = set(), {}, None
    for line in (REPO / "Makefile").read_text().splitlines():
        if line.startswith(".PHONY:"):
            phony.update(line.split(":", 1)[1].split())
        elif re.match(r"^[A-Za-z$(][^=\t]*:(?!=)", line) and not line.startswith("."):
            target = line.split(":", 1)[0].strip()
            recipes[target] = []
        elif line.startswith("\t") and target is not None:
            recipes[target].append(line.strip())
    return phony, recipes


def test_every_phony_target_has_a_rule():
    phony, recipes = makefile_rules()
    assert phony and phony <= set(recipes), sorted(phony - set(recipes))


def test_every_script_a_make_target_runs_exists_and_answers_help():
    _, recipes = makefile_rules()
    scripts = {script for lines in recipes.values() for line in lines
               for script in re.findall(r"\$\(PY\) ([\w/.-]+\.py)", line)}
    assert "benchmark_extraction.py" in scripts  # make bench
    for script in sorted(scripts):
        assert (REPO / script).is_file(), script
        result = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True,
                                cwd=REPO, timeout=120)
        assert result.returncode == 0, (script, result.stderr[-2000:])


def imported_top_level_modules() -> set[str]:
    modules = set()
    for path in [*REPO.glob("*.py"), *REPO.glob("tests/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules.add(node.module.split(".")[0])
    return modules


def test_every_pinned_package_is_used():
    pinned = {line.split("==")[0].strip().lower() for line in (REPO / "requirements.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    distribution_of = packages_distributions()
    used = {dist.lower() for module in imported_top_level_modules() for dist in distribution_of.get(module, [])}
    unused = sorted(pinned - used - set(USED_WITHOUT_IMPORT))
    assert not unused, f"pinned but never imported: {unused}"


def imports_of(path) -> set[str]:
    """Top-level modules a file imports, and `module.name` for each `from module import name`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_evaluation_benchmark_and_inference_take_shared_code_from_library_modules():
    """The embedding loops and model building live in model_runner.py; inference needs no extractor.
    The benchmark takes from the training script only what it times: a step, a run, its loader."""
    timed = {"train_twin_verification.train_one_epoch", "train_twin_verification.run_training",
             "train_twin_verification.epoch_batches"}
    for script in ("evaluate.py", "benchmark_training.py"):
        imported = imports_of(REPO / script)
        taken_from_training = {name for name in imported if name.startswith("train_twin_verification.")}
        assert taken_from_training <= timed, (script, taken_from_training)
        assert "model_runner" in imported, script
    assert "train_twin_verification" not in imports_of(REPO / "evaluate.py")
    assert "face_parts_extractor" not in imports_of(REPO / "inference.py")


SCRIPTS = sorted(p.stem for p in REPO.glob("*.py") if 'if __name__ == "__main__":' in p.read_text())


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_help(script, capsys):
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out
