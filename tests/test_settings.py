"""Config, cohort sheet, protocol and ROI-name validation: mistakes fail with the file and key named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from isotox.errors import ConfigError
from isotox.settings import RoiNameMap, check_patient_id, load_protocol, load_validated_yaml, read_cohort_sheet, validate_document

REPO = Path(__file__).resolve().parents[1]


def test_default_config_and_shipped_files_validate() -> None:
    load_validated_yaml(REPO / "config/config.yaml", "config")
    for protocol in (REPO / "config/protocols").glob("*.yaml"):
        assert load_protocol(protocol)["name"] == protocol.stem
    read_cohort_sheet(REPO / "config/cohort.tsv")


def test_config_typo_names_key_and_file() -> None:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["sample"]["preset"] = "smal"
    with pytest.raises(ConfigError) as err:
        validate_document(config, "config", "my/config.yaml")
    assert "my/config.yaml" in str(err.value) and "sample.preset" in str(err.value) and "smal" in str(err.value)

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["protocoll"] = "x.yaml"
    with pytest.raises(ConfigError, match="protocoll"):
        validate_document(config, "config", "c.yaml")


@pytest.mark.parametrize("bad", ["../etc", "a/b", "with space", "", ".hidden", "x" * 65, "a..b"])
def test_unsafe_patient_ids_rejected(bad: str) -> None:
    with pytest.raises(ConfigError, match="patient id"):
        check_patient_id(bad)


@pytest.mark.parametrize("good", ["P001", "LUNG-12", "maastro_7.2", "007"])
def test_safe_patient_ids_accepted(good: str) -> None:
    assert check_patient_id(good) == good


def _sheet(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cohort.tsv"
    path.write_text(text)
    return path


def test_cohort_sheet_reports_every_bad_row_with_line_and_column(tmp_path: Path) -> None:
    sheet = _sheet(tmp_path, "patient_id\tdicom_dir\thistology\tarm\nP1\td1\tsquamous\tA\n../P2\td2\tadeno\tA\nP3\td3\tsquamous\tC\nP1\td4\tsquamous\tB\n")
    with pytest.raises(ConfigError) as err:
        read_cohort_sheet(sheet)
    text = str(err.value)
    assert str(sheet) in text
    assert "line 3 (../P2), column 'patient_id'" in text
    assert "column 'histology'" in text and "'adeno'" in text
    assert "line 4 (P3), column 'arm'" in text
    assert "'P1' appears more than once" in text


def test_cohort_sheet_unknown_column_is_a_typo(tmp_path: Path) -> None:
    sheet = _sheet(tmp_path, "patient_id\tdicom_dir\thistology\thistolgy\nP1\td\tsquamous\tx\n")
    with pytest.raises(ConfigError, match="histolgy"):
        read_cohort_sheet(sheet)


def test_cohort_ids_stay_strings_and_sorted(tmp_path: Path) -> None:
    sheet = _sheet(tmp_path, "patient_id\tdicom_dir\thistology\n010\td\tsquamous\n002\td\tadenocarcinoma\n")
    table = read_cohort_sheet(sheet)
    assert list(table.index) == ["002", "010"]


def test_protocol_semantic_checks(tmp_path: Path) -> None:
    doc = yaml.safe_load((REPO / "config/protocols/isotoxic_hypofractionated.yaml").read_text())
    doc["total_dose_gy"] = {"min": 80.0, "max": 72.0}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="total_dose_gy"):
        load_protocol(path)
    doc = yaml.safe_load((REPO / "config/protocols/isotoxic_hypofractionated.yaml").read_text())
    doc["constraints"][0]["dose_type"] = "eqd2"  # EQD2 needs alpha/beta
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="alpha_beta_gy"):
        load_protocol(path)


def test_isotoxic_protocol_encodes_the_seed_document() -> None:
    """Numbers from seed 001: 3 Gy/fx, 45-72 Gy, cord 45 Gy and 2 Gy/fx, V20 30 %, V5 65 %, MLD 16 Gy, oesophagus 72 Gy."""
    p = load_protocol(REPO / "config/protocols/isotoxic_hypofractionated.yaml")
    assert p["fractionation"]["dose_per_fraction_gy"] == 3.0
    assert (p["total_dose_gy"]["min"], p["total_dose_gy"]["max"]) == (45.0, 72.0)
    limits = {(c["structure"], c["metric"], c["scope"]): c["limit"] for c in p["constraints"]}
    assert limits[("SPINAL_CORD", "Dmax", "total")] == 45.0
    assert limits[("SPINAL_CORD", "Dmax", "per_fraction")] == 2.0
    assert limits[("LUNGS_MINUS_GTV", "V20", "total")] == 30.0
    assert limits[("LUNGS_MINUS_GTV", "V5", "total")] == 65.0
    assert limits[("LUNGS_MINUS_GTV", "Dmean", "total")] == 16.0
    assert limits[("ESOPHAGUS", "Dmax", "total")] == 72.0
    assert p["margins"]["ctv_mm"]["adenocarcinoma"] == 8 and p["margins"]["ctv_mm"]["squamous"] == 6
    assert (p["safety"]["simon"]["n1"], p["safety"]["simon"]["n"], p["safety"]["simon"]["r1"]) == (12, 30, 8)


def test_pet_boost_protocol_encodes_the_seed_document() -> None:
    """Seed 000: 24 x 2.75 Gy = 66 Gy, boost to 72 Gy, arm A whole GTV, arm B 50 % SUVmax."""
    p = load_protocol(REPO / "config/protocols/pet_boost.yaml")
    assert p["fractionation"]["fractions"] == 24
    assert p["fractionation"]["dose_per_fraction_gy"]["max"] * 24 == pytest.approx(66.0)
    assert p["boost"]["test_total_gy"] == 72.0
    assert p["boost"]["arms"]["A"]["target"] == "GTV" and p["boost"]["arms"]["B"]["target"] == "GTV_SUV50"


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("Oesophagus", "ESOPHAGUS"), ("esophagus", "ESOPHAGUS"), ("ESO", "ESOPHAGUS"), ("Lung L", "LUNG_L"),
     ("LUNG_LT", "LUNG_L"), ("Long rechts", "LUNG_R"), ("Spinal-Cord", "SPINAL_CORD"), ("Myelum", "SPINAL_CORD"),
     ("GTVp", "GTV"), ("GTV_LN", "GTV_NODE"), ("External", "BODY"), ("Outer Contour", "BODY"), ("PTV_boost_x", None)],
)
def test_roi_names_map_clinic_variants(name: str, canonical: str | None) -> None:
    assert RoiNameMap.from_yaml(REPO / "config/roi_names.yaml").canonical(name) == canonical


def test_roi_synonym_in_two_structures_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "roi.yaml"
    path.write_text("structures:\n  HEART: {synonyms: [Heart]}\n  LUNG_L: {synonyms: [heart]}\n")
    with pytest.raises(ConfigError, match="maps to both"):
        RoiNameMap.from_yaml(path)


def test_registration_settings_read_the_two_stage_keys() -> None:
    """The config's registration keys reach RegistrationSettings (the shipped config: bony global stage,
    tumour-focused stage on at 15 mm, flag above 20 mm); a global_region other than bone/body is refused."""
    from isotox.registration.rigid import RegistrationSettings

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())
    s = RegistrationSettings.from_config(config["registration"])
    assert (s.global_region, s.tumour_focus, s.tumour_margin_mm, s.max_tumour_discrepancy_mm) == ("bone", True, 15, 20.0)
    off = RegistrationSettings.from_config({"tumour_focus": False, "tumour_margin_mm": 35, "qc": {"max_tumour_discrepancy_mm": 12}})
    assert (off.tumour_focus, off.tumour_margin_mm, off.max_tumour_discrepancy_mm) == (False, 35, 12)
    with pytest.raises(ValueError, match="global_region"):
        RegistrationSettings.from_config({"global_region": "lungs"})
