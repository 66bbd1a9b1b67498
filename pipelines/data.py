"""Load and validate the UCI Vertebral Column data set from any of its published forms.

Accepted: the Kaggle CSV export (header row, label column ``status`` or ``class``),
the UCI ``.dat`` files (space separated, labels DH/SL/NO or AB/NO), the UCI
``.arff`` files, and the official UCI zip holding them. Whatever the source, the
result is the same six float columns in :data:`FEATURES` order, one label per row
from :data:`CLASSES`, and a fingerprint of that normalised table.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from conf.contract import FEATURES
from conf.settings import DataSettings

log = logging.getLogger(__name__)

CLASSES = {
    "3C": ("Hernia", "Spondylolisthesis", "Normal"),
    "2C": ("Abnormal", "Normal"),
}
# The class a binary model's threshold is about (the lab's label 1: Abnormal = 1, Normal = 0).
POSITIVE_CLASS = {"2C": "Abnormal"}
# Every spelling of a label met in the published files, mapped to its 3C name
# (or to "Abnormal", which only the 2C files use).
_LABELS = {
    "hernia": "Hernia",
    "dh": "Hernia",
    "spondylolisthesis": "Spondylolisthesis",
    "sl": "Spondylolisthesis",
    "normal": "Normal",
    "no": "Normal",
    "abnormal": "Abnormal",
    "ab": "Abnormal",
}
_LABEL_COLUMNS = ("status", "class", "label", "target")
_ZIP_MEMBERS = {
    "3C": ("column_3C.dat", "column_3C_weka.arff"),
    "2C": ("column_2C.dat", "column_2C_weka.arff"),
}
CACHE_FILE = "vertebral+column.zip"


class DataError(ValueError):
    """The data file is missing or invalid; the message names the line and column."""


@dataclass(frozen=True)
class Dataset:
    """The validated data: features in FEATURES order, labels, and their fingerprint."""

    features: pd.DataFrame
    labels: pd.Series
    variant: str
    fingerprint: str
    source: str

    @property
    def classes(self) -> tuple[str, ...]:
        return CLASSES[self.variant]

    @property
    def positive_class(self) -> str | None:
        """The positive class of a binary variant (None for 3C)."""
        return POSITIVE_CLASS.get(self.variant)


# --- readers: each returns (raw table with FEATURES + "label" columns, first data line) --


def _normalise_header(name: str) -> str:
    # The 2C Kaggle export has "pelvic_tilt numeric": keep the first word only.
    return str(name).strip().strip("'\"").split()[0].lower() if str(name).strip() else ""


def _read_csv(text: str) -> tuple[pd.DataFrame, int]:
    first_line = text.lstrip("\ufeff").splitlines()[0] if text.strip() else ""
    delimiter = ";" if first_line.count(";") > first_line.count(",") else ","
    table = pd.read_csv(
        io.StringIO(text.lstrip("\ufeff")),
        sep=delimiter,
        dtype=str,
        keep_default_na=False,
        skipinitialspace=True,
    )
    table.columns = [_normalise_header(c) for c in table.columns]
    label_cols = [c for c in table.columns if c in _LABEL_COLUMNS]
    if not label_cols:
        raise DataError(f"line 1: no label column (expected one of {', '.join(_LABEL_COLUMNS)})")
    table = table.rename(columns={label_cols[0]: "label"})
    return table, 2


def _read_dat(text: str) -> tuple[pd.DataFrame, int]:
    rows = [line.split() for line in text.splitlines()]
    columns = [*FEATURES, "label"]
    for number, row in enumerate(rows, start=1):
        if row and len(row) != len(columns):
            raise DataError(
                f"line {number}: expected {len(columns)} space-separated values, found {len(row)}"
            )
    # Blank lines keep their numbers out of the table but count for line numbers.
    numbered = [(n, r) for n, r in enumerate(rows, start=1) if r]
    table = pd.DataFrame([r for _, r in numbered], columns=columns, dtype=str)
    table.index = [n for n, _ in numbered]
    return table, 1


def _read_arff(text: str) -> tuple[pd.DataFrame, int]:
    attributes: list[str] = []
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.lower().startswith("@attribute"):
            match = re.match(r"@attribute\s+('[^']*'|\"[^\"]*\"|\S+)", stripped, re.IGNORECASE)
            attributes.append(_normalise_header(match.group(1)) if match else "")
        elif stripped.lower().startswith("@data"):
            numbered = [
                (n, [v.strip().strip("'\"") for v in line.split(",")])
                for n, line in enumerate(lines[number:], start=number + 1)
                if line.strip() and not line.strip().startswith("%")
            ]
            for n, row in numbered:
                if len(row) != len(attributes):
                    raise DataError(
                        f"line {n}: expected {len(attributes)} comma-separated "
                        f"values, found {len(row)}"
                    )
            table = pd.DataFrame([r for _, r in numbered], columns=attributes, dtype=str)
            table.index = [n for n, _ in numbered]
            label_cols = [c for c in table.columns if c in _LABEL_COLUMNS]
            if not label_cols:
                raise DataError("no class attribute in the ARFF header")
            return table.rename(columns={label_cols[0]: "label"}), 0
    raise DataError("no @data section in the ARFF file")


def _read_zip(path: Path, variant: str) -> tuple[pd.DataFrame, int, str]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DataError(f"{path}: not a valid zip file") from None
    with archive:
        names = {Path(n).name: n for n in archive.namelist()}
        for wanted in _ZIP_MEMBERS[variant]:
            if wanted in names:
                text = archive.read(names[wanted]).decode("utf-8", errors="replace")
                reader = _read_dat if wanted.endswith(".dat") else _read_arff
                table, first = reader(text)
                return table, first, f"{path}!{wanted}"
    raise DataError(f"{path}: the zip holds none of {', '.join(_ZIP_MEMBERS[variant])}")


# --- validation ------------------------------------------------------------------


def _validate(table: pd.DataFrame, first_line: int, variant: str, source: str) -> Dataset:
    columns = [c for c in table.columns if c != "label"]
    missing = [f for f in FEATURES if f not in columns]
    extra = [c for c in columns if c not in FEATURES]
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"missing column(s) {', '.join(missing)}")
        if extra:
            problems.append(f"unexpected column(s) {', '.join(map(str, extra))}")
        raise DataError(f"{source}: {'; '.join(problems)} (expected exactly {', '.join(FEATURES)})")
    if table.empty:
        raise DataError(f"{source}: no data rows")
    if first_line:  # CSV: line numbers follow the row position
        table = table.reset_index(drop=True)
        table.index = table.index + first_line

    values = {}
    for feature in FEATURES:
        numbers = pd.to_numeric(table[feature].str.strip(), errors="coerce")
        bad = numbers.isna() | ~numbers.map(lambda v: math.isfinite(v) if v == v else False)
        if bad.any():
            line = bad.idxmax()
            raise DataError(
                f"{source}: line {line}, column {feature}: "
                f"expected a finite number, got {table.at[line, feature]!r}"
            )
        values[feature] = numbers.astype("float64")

    raw_labels = table["label"].astype(str).str.strip()
    labels = raw_labels.str.lower().map(_LABELS)
    if labels.isna().any():
        line = labels.isna().idxmax()
        raise DataError(f"{source}: line {line}, column label: unknown label {raw_labels[line]!r}")
    variant = _variant_of(labels, variant, source)
    if variant == "2C":
        labels = labels.replace({"Hernia": "Abnormal", "Spondylolisthesis": "Abnormal"})

    features = pd.DataFrame(values, columns=list(FEATURES)).reset_index(drop=True)
    labels = labels.reset_index(drop=True).rename("label")
    return Dataset(features, labels, variant, fingerprint(features, labels), source)


def _variant_of(labels: pd.Series, asked: str, source: str) -> str:
    """The variant to train: the file's own (auto), or the one asked when the file allows it.

    A 3-class file read as 2C merges its two abnormal classes (the UCI 2C file is exactly
    that table); a 2-class file cannot be split back into three, so asking 3C of it stops.
    """
    abnormal = labels == "Abnormal"
    if abnormal.any() and (labels.isin(["Hernia", "Spondylolisthesis"])).any():
        line = abnormal.idxmax()
        raise DataError(
            f"{source}: line {line}: label 'Abnormal' (2-class) mixed with 3-class labels"
        )
    found = "2C" if abnormal.any() else "3C"
    if asked == "auto" or asked == found:
        return found
    if asked == "2C":
        return "2C"
    raise DataError(
        f"{source}: its label 'Abnormal' belongs to the 2-class variant, but the "
        "variant asked is 3C; give the 3-class file or --variant 2C"
    )


def fingerprint(features: pd.DataFrame, labels: pd.Series) -> str:
    """sha256 of the normalised table (FEATURES order, repr-exact floats, labels)."""
    digest = hashlib.sha256()
    digest.update((",".join([*FEATURES, "label"]) + "\n").encode())
    for row, label in zip(features[list(FEATURES)].itertuples(index=False), labels, strict=False):
        digest.update((",".join(repr(float(v)) for v in row) + f",{label}\n").encode())
    return digest.hexdigest()


def read_dataset(path: str | Path, variant: str = "auto") -> Dataset:
    """Read and validate one data file (CSV, .dat, .arff or the UCI zip).

    ``variant`` "auto" follows the file's labels (the UCI zip: its 3-class member).

    Raises:
        DataError: the file is missing or invalid; the message names line and column.
    """
    path = Path(path)
    if variant not in (*CLASSES, "auto"):
        raise DataError(
            f"unknown variant {variant!r}; expected one of {', '.join(CLASSES)} or auto"
        )
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    source = str(path)
    suffix = path.suffix.lower()
    if suffix == ".zip":
        table, first, source = _read_zip(path, "3C" if variant == "auto" else variant)
    else:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        reader = {".dat": _read_dat, ".arff": _read_arff}.get(suffix, _read_csv)
        table, first = reader(text)
    return _validate(table, first, variant, source)


def cached_or_downloaded(settings: DataSettings) -> Path:
    """The UCI zip in the cache directory, downloading it once when absent.

    Raises:
        DataError: offline or the download failed; the message names VERTEBRAL_DATA.
    """
    target = settings.cache_dir / CACHE_FILE
    if target.is_file():
        return target
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into %s", settings.url, target)
    try:
        with (
            urllib.request.urlopen(settings.url, timeout=30) as response,
            tempfile.NamedTemporaryFile(dir=settings.cache_dir, delete=False) as tmp,
        ):
            shutil.copyfileobj(response, tmp)
        Path(tmp.name).replace(target)  # atomic: a half download never looks cached
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        if "tmp" in locals():
            Path(tmp.name).unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"could not download the data set from {settings.url} ({reason}); "
            f"set VERTEBRAL_DATA to a local copy (CSV, .dat, .arff or the UCI zip)"
        ) from None
    return target


def variant_file(path: Path, variant: str) -> Path:
    """The UCI file of ``variant`` beside ``path`` (column_3C… <-> column_2C…), else ``path``.

    For callers that want the published file of a variant explicitly; ``load_dataset``
    never swaps the file it was given.
    """
    sibling = path.with_name(re.sub(r"(?<=column_)[23]C", variant, path.name))
    return sibling if sibling != path and sibling.is_file() else path


def load_dataset(settings: DataSettings) -> Dataset:
    """The data set the settings point at (``VERTEBRAL_DATA`` or the cache), as given."""
    path = settings.path if settings.path is not None else cached_or_downloaded(settings)
    return read_dataset(path, settings.variant)
