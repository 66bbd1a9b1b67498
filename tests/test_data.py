"""Data loading: every published format, label mapping, validation, fingerprint, cache."""

import functools
import http.server
import threading
import zipfile
from pathlib import Path

import pytest
from conftest import data_path

from conf.contract import FEATURES
from conf.settings import DataSettings
from pipelines.data import (
    CACHE_FILE,
    DataError,
    cached_or_downloaded,
    load_dataset,
    read_dataset,
)

ROWS_3C = [  # (six features, UCI .dat label, full label)
    ((63.03, 22.55, 39.61, 40.48, 98.67, -0.25), "DH", "Hernia"),
    ((39.06, 10.06, 25.02, 29.0, 114.41, 4.56), "DH", "Hernia"),
    ((74.38, 32.05, 78.77, 42.32, 143.56, 56.13), "SL", "Spondylolisthesis"),
    ((89.68, 32.7, 83.13, 56.98, 129.96, 92.03), "SL", "Spondylolisthesis"),
    ((38.51, 16.96, 35.11, 21.54, 127.63, 7.99), "NO", "Normal"),
]
ABNORMAL = {"Hernia": "Abnormal", "Spondylolisthesis": "Abnormal", "Normal": "Normal"}


def write_dat(path: Path, two_class: bool = False) -> Path:
    codes = {"DH": "AB", "SL": "AB", "NO": "NO"} if two_class else {}
    path.write_text(
        "".join(
            " ".join(f"{v:.2f}" for v in values) + f" {codes.get(code, code)}\n"
            for values, code, _ in ROWS_3C
        )
    )
    return path


def write_arff(path: Path, two_class: bool = False) -> Path:
    labels = "{Abnormal,Normal}" if two_class else "{Hernia,Spondylolisthesis,Normal}"
    header = (
        "@relation column\n\n"
        + "".join(f"@attribute {name} numeric\n" for name in FEATURES)
        + f"@attribute class {labels}\n\n@data\n"
    )
    body = "".join(
        ",".join(f"{v:.2f}" for v in values) + f",{ABNORMAL[label] if two_class else label}\n"
        for values, _, label in ROWS_3C
    )
    path.write_text(header + body)
    return path


def write_csv(path: Path, header: list[str] | None = None, sep: str = ",", rows=ROWS_3C) -> Path:
    header = header or [*FEATURES, "status"]
    lines = [sep.join(header)] + [
        sep.join([*(str(v) for v in values), label]) for values, _, label in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_zip(path: Path, tmp: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(write_dat(tmp / "column_3C.dat"), "column_3C.dat")
        archive.write(write_dat(tmp / "column_2C.dat", two_class=True), "column_2C.dat")
        archive.write(write_arff(tmp / "column_3C_weka.arff"), "column_3C_weka.arff")
    return path


EXPECTED_3C = [label for _, _, label in ROWS_3C]
EXPECTED_2C = [ABNORMAL[label] for label in EXPECTED_3C]


@pytest.mark.parametrize(
    "writer, variant, expected",
    [
        (lambda p: write_dat(p / "column_3C.dat"), "3C", EXPECTED_3C),
        (lambda p: write_dat(p / "column_2C.dat", two_class=True), "2C", EXPECTED_2C),
        (lambda p: write_arff(p / "column_3C_weka.arff"), "3C", EXPECTED_3C),
        (lambda p: write_arff(p / "column_2C_weka.arff", two_class=True), "2C", EXPECTED_2C),
        (lambda p: write_csv(p / "k.csv"), "3C", EXPECTED_3C),
        (lambda p: write_csv(p / "k.csv", sep=";"), "3C", EXPECTED_3C),
        (lambda p: write_zip(p / "vertebral+column.zip", p), "3C", EXPECTED_3C),
        (lambda p: write_zip(p / "vertebral+column.zip", p), "2C", EXPECTED_2C),
        # A 3-class file read as the 2-class variant folds Hernia and Spondylolisthesis.
        (lambda p: write_dat(p / "column_3C.dat"), "2C", EXPECTED_2C),
    ],
)
def test_reads_every_format(tmp_path, writer, variant, expected):
    """Check that each UCI/Kaggle format gives the six features and the mapped labels."""
    dataset = read_dataset(writer(tmp_path), variant)
    assert list(dataset.features.columns) == list(FEATURES)
    assert dataset.features.shape == (len(ROWS_3C), 6)
    assert dataset.features.iloc[2, 5] == pytest.approx(56.13)
    assert list(dataset.labels) == expected
    assert dataset.variant == variant


def test_formats_of_the_same_data_share_a_fingerprint(tmp_path):
    """Check that the fingerprint depends on the data, not on the file format."""
    prints = {
        read_dataset(write_dat(tmp_path / "c.dat")).fingerprint,
        read_dataset(write_arff(tmp_path / "c.arff")).fingerprint,
        read_dataset(write_zip(tmp_path / "c.zip", tmp_path)).fingerprint,
    }
    assert len(prints) == 1
    changed = ROWS_3C[:-1] + [((38.51, 16.96, 35.11, 21.54, 127.63, 8.0), "NO", "Normal")]
    assert read_dataset(write_csv(tmp_path / "other.csv", rows=changed)).fingerprint not in prints


def test_reference_csv_files():
    """Check the shared Kaggle exports: 310 rows, class counts, the 2C header quirk."""
    three = read_dataset(data_path(), "3C")
    assert three.labels.value_counts().to_dict() == {
        "Spondylolisthesis": 150,
        "Normal": 100,
        "Hernia": 60,
    }
    two_class_file = data_path().with_name("column_2C_weka.csv")
    if not two_class_file.exists():
        pytest.skip("the 2-class CSV is not beside VERTEBRAL_DATA")
    two = read_dataset(two_class_file, "2C")  # header says "pelvic_tilt numeric"
    assert list(two.features.columns) == list(FEATURES)
    assert two.labels.value_counts().to_dict() == {"Abnormal": 210, "Normal": 100}
    assert (two.features.values == three.features.values).all()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda lines: lines.__setitem__(2, lines[2].replace("39.06", "abc")),
            r"line 3, column pelvic_incidence: expected a finite number, got 'abc'",
        ),
        (
            lambda lines: lines.__setitem__(1, lines[1].replace("22.55", "inf")),
            r"line 2, column pelvic_tilt: expected a finite number, got 'inf'",
        ),
        (
            lambda lines: lines.__setitem__(3, lines[3].replace("42.32", "")),
            r"line 4, column sacral_slope: expected a finite number, got ''",
        ),
        (
            lambda lines: lines.__setitem__(4, lines[4].replace("Spondylolisthesis", "Scoliosis")),
            r"line 5, column label: unknown label 'Scoliosis'",
        ),
        (
            lambda lines: lines.__setitem__(0, lines[0].replace("pelvic_radius", "radius")),
            r"missing column\(s\) pelvic_radius; unexpected column\(s\) radius",
        ),
        (
            lambda lines: lines.__setitem__(0, lines[0].replace("status", "diagnosis")),
            r"line 1: no label column",
        ),
        (lambda lines: lines.__delitem__(slice(1, None)), r"no data rows"),
    ],
)
def test_invalid_csv_names_line_and_column(tmp_path, mutate, message):
    """Check that an invalid file fails with the line number and column named."""
    lines = write_csv(tmp_path / "ok.csv").read_text().splitlines()
    mutate(lines)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        read_dataset(bad)


def test_invalid_dat_names_the_line(tmp_path):
    """Check that a .dat row with a missing value names its line."""
    path = write_dat(tmp_path / "column_3C.dat")
    lines = path.read_text().splitlines()
    lines[3] = " ".join(lines[3].split()[:-2] + ["SL"])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 4: expected 7 space-separated values, found 6"):
        read_dataset(path)


def test_two_class_file_cannot_become_three_classes(tmp_path):
    """Check that asking 3 classes of a 2-class file says which variant to use."""
    with pytest.raises(DataError, match="belongs to the 2-class variant"):
        read_dataset(write_dat(tmp_path / "column_2C.dat", two_class=True), "3C")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.csv", None, "data file not found"),
        ("broken.zip", b"not a zip", "not a valid zip file"),
        ("latin1.csv", "pelvic_incidence\n\xe9".encode("latin-1"), "not UTF-8 text"),
    ],
)
def test_unreadable_files(tmp_path, name, content, message):
    """Check that missing, corrupt and mis-encoded files get a clear message."""
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_dataset(path)


def test_uses_the_cache_without_downloading(tmp_path):
    """Check that a cached zip is used and the URL is never contacted."""
    write_zip(tmp_path / CACHE_FILE, tmp_path)
    settings = DataSettings(cache_dir=tmp_path, url="http://127.0.0.1:9/unreachable.zip")
    assert list(load_dataset(settings).labels) == EXPECTED_3C


def test_downloads_into_the_cache_once(tmp_path):
    """Check that a missing cache is filled by downloading the zip from the URL."""
    served = tmp_path / "served"
    served.mkdir()
    write_zip(served / "vertebral+column.zip", tmp_path)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/vertebral+column.zip"
        settings = DataSettings(cache_dir=tmp_path / "cache", url=url)
        assert list(load_dataset(settings).labels) == EXPECTED_3C
        assert (tmp_path / "cache" / CACHE_FILE).is_file()
    finally:
        server.shutdown()
    # Second call: the server is gone, the cache answers.
    assert cached_or_downloaded(settings) == tmp_path / "cache" / CACHE_FILE


def test_offline_download_failure_names_vertebral_data(tmp_path):
    """Check that with no data and no network the message tells to set VERTEBRAL_DATA."""
    settings = DataSettings(cache_dir=tmp_path / "cache", url="http://127.0.0.1:9/x.zip")
    with pytest.raises(DataError, match="set VERTEBRAL_DATA"):
        load_dataset(settings)
    assert not list((tmp_path / "cache").iterdir()), "a failed download left a file behind"


def test_the_data_file_given_is_the_file_used_and_its_labels_set_the_variant(tmp_path):
    """Check that --data names the file trained on: a 2C file beside a 3C one is read as 2C."""
    from pipelines.train import settings_from_options

    three = write_dat(tmp_path / "column_3C.dat")
    two = write_dat(tmp_path / "column_2C.dat", two_class=True)
    for given, variant, labels in ((two, "2C", {"Abnormal", "Normal"}), (three, "3C", None)):
        settings = settings_from_options(None, None, None, None, None, str(given), None)
        dataset = load_dataset(settings.data)
        assert dataset.source == str(given)
        assert dataset.variant == variant
        assert set(dataset.labels) == (labels or {"Hernia", "Spondylolisthesis", "Normal"})


def test_a_variant_the_file_cannot_give_stops_with_one_line_naming_both(tmp_path):
    """Check that `pipelines.train --data <2C file> --variant 3C` exits 1 with one line."""
    from click.testing import CliRunner

    from pipelines.train import main

    two = write_dat(tmp_path / "column_2C.dat", two_class=True)
    result = CliRunner().invoke(main, ["--data", str(two), "--variant", "3C"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    assert str(two) in lines[0] and "2-class" in lines[0] and "3C" in lines[0]


def test_a_three_class_file_asked_as_2c_merges_its_abnormal_classes(tmp_path):
    """Check that --variant 2C on a 3-class file trains Abnormal/Normal from that file."""
    three = write_dat(tmp_path / "column_3C.dat")
    dataset = load_dataset(DataSettings(path=three, variant="2C"))
    assert dataset.source == str(three)
    assert list(dataset.labels) == [ABNORMAL[full] for *_, full in ROWS_3C]
