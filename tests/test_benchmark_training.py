"""The training benchmark: precision, the largest-batch search (CUDA only) and whole training runs."""

import re

import pytest
import torch

import benchmark_training
from conftest import REPO


def test_timed_steps_report_part_images_per_second_at_the_asked_precision(capsys):
    assert benchmark_training.main(["--devices", "cpu", "--sizes", "small", "--steps", "1", "--batch-size", "2",
                                    "--precision", "fp32"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "small cpu    fp32 batch   2" in line and re.search(r"\d+ part-images/s", line)


def test_compiled_steps_go_through_torch_compile_and_say_so(capsys, monkeypatch):
    real_compile, compiled = torch.compile, []
    monkeypatch.setattr(torch, "compile",  # the eager backend: traced, nothing generated
                        lambda module, **settings: compiled.append(module) or real_compile(module, backend="eager"))
    assert benchmark_training.main(["--devices", "cpu", "--sizes", "small", "--steps", "1", "--batch-size", "2",
                                    "--precision", "fp32", "--compile"]) == 0
    assert len(compiled) == 1
    assert "small cpu    fp32 compiled batch   2" in capsys.readouterr().out.strip().splitlines()[-1]


def test_activation_checkpointed_steps_recompute_and_say_so(capsys, monkeypatch):
    import face_parts_model

    recomputed = []
    real = face_parts_model.run_checkpointed
    monkeypatch.setattr(face_parts_model, "run_checkpointed",
                        lambda segments, x: recomputed.append(len(segments)) or real(segments, x))
    assert benchmark_training.main(["--devices", "cpu", "--sizes", "small", "--steps", "1", "--batch-size", "2",
                                    "--precision", "fp32", "--activation-checkpointing"]) == 0
    assert recomputed  # every part trunk of every training step
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "fp32 activation-checkpointed batch   2" in line and "peak memory" in line


def test_largest_batch_without_cuda_is_a_usage_error(capsys):
    assert benchmark_training.main(["--devices", "cpu", "--sizes", "small", "--largest-batch"]) == 2
    assert "--largest-batch needs a CUDA device" in capsys.readouterr().err


def test_a_training_run_reports_its_epochs(capsys):
    assert benchmark_training.main(["--devices", "cpu", "--sizes", "small", "--batch-size", "2",
                                    "--training-run", "1"]) == 0
    assert re.search(r"training run: 1 epochs in [\d.]+ s, \d+ part-images/s", capsys.readouterr().out)


def test_the_loader_alone_reports_part_images_per_second(capsys):
    assert benchmark_training.main(["--devices", "cpu", "--sizes", "small", "--batch-size", "2", "--workers", "0",
                                    "--loader-only"]) == 0
    output = capsys.readouterr().out
    assert re.search(r"loader alone, 0 loader process\(es\): \d+ part-images/s", output)
    assert re.search(r"\d+ part-images/s per core", output)


def test_every_benchmark_flag_the_gpu_check_uses_exists(capsys):
    lines = (REPO / "scripts" / "gpu_check.sh").read_text().replace("\\\n", " ").splitlines()  # join continuations
    calls = [line.split("benchmark_training.py", 1)[1] for line in lines if "benchmark_training.py" in line]
    used = set(re.findall(r"--[a-z][a-z-]+", " ".join(calls)))
    with pytest.raises(SystemExit):
        benchmark_training.main(["--help"])
    offered = set(re.findall(r"--[a-z][a-z-]+", capsys.readouterr().out))
    assert {"--precision", "--largest-batch", "--training-run", "--compile"} <= used  # continuation lines too
    assert used <= offered, used - offered
