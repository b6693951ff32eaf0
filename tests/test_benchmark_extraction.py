"""The extraction benchmark: both throughputs and their ratio, into a scratch folder it makes."""

import re

import benchmark_extraction


def test_extraction_and_landmarker_throughput_and_their_ratio(copy_photos, landmarker_model, tmp_path, capsys):
    photos = copy_photos({"biden": ["biden.jpg"], "audrey_hepburn": ["audrey.jpg"]})
    scratch = tmp_path / "not" / "yet" / "there"
    assert benchmark_extraction.main(["--image-folder", str(photos), "--repeat", "2", "--workers", "1",
                                      "--landmarker-model", str(landmarker_model),
                                      "--scratch-dir", str(scratch)]) == 0
    output = capsys.readouterr().out
    assert "4 photos (2 distinct, each 2 times)" in output
    assert re.search(r"so the 9 files of a photo take [\d.]+ ms of one core", output)
    assert re.search(r"workers=1: decode\+landmarker +[\d.]+ img/s \| whole extraction +[\d.]+ img/s \| ratio +[\d.]+%",
                     output)
    assert scratch.is_dir() and not any(scratch.iterdir())  # the timed extractions are deleted at the end


def test_files_per_photo_is_what_extraction_writes(copy_photos, landmarker_model, tmp_path):
    from face_parts_extractor import ExtractionSettings, dataset_from_folders, extract_dataset

    photos = copy_photos({"biden": ["biden.jpg"]})
    for regions in (("nose",), ("left_eye", "right_eye", "nose", "mouth", "chin", "forehead")):
        output = tmp_path / f"out{len(regions)}"
        extract_dataset(dataset_from_folders(photos), photos, output, ExtractionSettings(crop_size_px=32, regions=regions),
                        landmarker_model=landmarker_model, progress=False, contact_sheet_images=0)
        folder, = (output / "biden").iterdir()
        assert len(list(folder.iterdir())) == benchmark_extraction.files_per_photo(len(regions))


def test_rounds_alternate_the_two_timings_and_give_the_median_ratio(copy_photos, landmarker_model, tmp_path, capsys):
    photos = copy_photos({"biden": ["biden.jpg"]})
    assert benchmark_extraction.main(["--image-folder", str(photos), "--repeat", "1", "--workers", "1",
                                      "--rounds", "3", "--landmarker-model", str(landmarker_model),
                                      "--scratch-dir", str(tmp_path / "scratch")]) == 0
    output = capsys.readouterr().out
    ratios = [float(r) for r in re.findall(r"workers=1, round \d: .*\| ratio +([\d.]+)%", output)]
    assert len(ratios) == 3
    median = re.search(r"workers=1: median ratio +([\d.]+)% over 3 rounds \(range ([\d.]+)%-([\d.]+)%\)", output)
    assert median is not None
    assert [float(v) for v in median.groups()] == [sorted(ratios)[1], min(ratios), max(ratios)]


def test_no_timed_extraction_is_deleted_before_the_last_one_ends(copy_photos, landmarker_model, tmp_path, monkeypatch):
    """Deleting thousands of files slows file creation beside them for minutes (ext4), which
    would slow the next timing down."""
    photos = copy_photos({"biden": ["biden.jpg"]})
    outputs, seen = [], []
    real = benchmark_extraction.extract_dataset

    def recording(dataset, dataset_dir, output, **kwargs):
        seen.append(all(folder.is_dir() for folder in outputs))
        outputs.append(output)
        return real(dataset, dataset_dir, output, **kwargs)

    monkeypatch.setattr(benchmark_extraction, "extract_dataset", recording)
    assert benchmark_extraction.main(["--image-folder", str(photos), "--repeat", "1", "--workers", "1", "2",
                                      "--rounds", "2", "--landmarker-model", str(landmarker_model),
                                      "--scratch-dir", str(tmp_path / "scratch")]) == 0
    assert len(outputs) == 4 and len(set(outputs)) == 4 and all(seen)
    assert not any((tmp_path / "scratch").iterdir())
