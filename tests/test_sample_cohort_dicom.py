"""The embedded sample cohort is valid DICOM and agrees with its own ground truth.

Every check reads the files with independent code (pydicom + the DICOM rules, SimpleITK's GDCM
reader, dcm2niix, dciodvfy) and compares with ``ground_truth.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.path import Path as MplPath

from isotox.geometry import RigidTransform
from isotox.sample import write_sample_patient
from tests.conftest import SAMPLE_PATIENTS, SAMPLE_SEED
from tests.sample_dicom import by_series, geometry, read_all, sorted_slices, suv_factor, volume


@pytest.fixture(scope="module")
def patients(sample_run: Path) -> list[dict]:
    out = []
    for folder in sorted((sample_run / "sample").glob("SAMPLE*")):
        truth = json.loads((folder / "ground_truth.json").read_text())
        series = by_series(read_all(folder / "dicom"))
        out.append({"folder": folder, "truth": truth, "series": series})
    assert len(out) == SAMPLE_PATIENTS
    return out


def _find(series: dict, modality: str, description_part: str) -> list:
    hits = [items for items in series.values() if items[0][1].Modality == modality and description_part in items[0][1].SeriesDescription]
    assert len(hits) == 1, f"expected one {modality} series '{description_part}', found {len(hits)}"
    return hits[0]


def _pose(session_truth: dict) -> RigidTransform:
    t = session_truth["planning_to_session"]
    return RigidTransform(tuple(np.radians(t["angles_deg"])), tuple(t["translation_mm"]), tuple(t["centre_mm"]))


def test_every_file_reads_without_force_and_series_are_complete(patients: list[dict]) -> None:
    for p in patients:
        modalities = sorted(items[0][1].Modality for items in p["series"].values())
        four_d = p["truth"]["planning_ct"].get("phases", 0) + 1 if p["truth"]["planning_ct"]["kind"] != "free-breathing" else 0  # phases + MIP
        assert modalities == ["CT"] * (5 + four_d) + ["PT"] * 6 + ["RTSTRUCT"]  # each PET study: AC and NAC
        for items in p["series"].values():
            ds = items[0][1]
            assert {str(d.PatientID) for _, d in items} == {p["truth"]["patient_id"]}
            assert len({str(d.SOPInstanceUID) for _, d in items}) == len(items)
            assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID


@pytest.mark.parametrize(("modality", "label", "grid_key"), [
    ("CT", "Planning", "planning_grid"), ("CT", "FDG PET/CT", "fdg.ct_grid"), ("PT", "FDG PET AC", "fdg.pet_grid"),
    ("PT", "HX4 PET", None),
])
def test_sitk_gdcm_reader_recovers_intended_geometry(patients: list[dict], modality: str, label: str, grid_key: str | None) -> None:
    """GDCM (through SimpleITK) and a tag-level computation both give the generator's grid, to 1e-3 mm."""
    for p in patients:
        if grid_key is None:  # two HX4 PET series: check both against their session grids
            items_list = [items for items in p["series"].values() if items[0][1].Modality == "PT" and "HX4 PET AC" in items[0][1].SeriesDescription]
            keys = sorted(("hx4_2h.pet_grid", "hx4_4h.pet_grid"))
            grids = [p["truth"]["sessions"][k.split(".")[0]]["pet_grid"] for k in keys]
            items_list.sort(key=lambda items: items[0][1].SeriesTime)
        else:
            items_list = [_find(p["series"], modality, label)]
            node = p["truth"]
            for part in grid_key.split("."):
                node = node["sessions"][part] if part in p["truth"]["sessions"] else node[part]
            grids = [node]
        for items, grid in zip(items_list, grids):
            files = [str(path) for path, _ in items]
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(Path(files[0]).parent)))
            image = reader.Execute()
            assert list(image.GetSize()) == grid["size"]
            np.testing.assert_allclose(image.GetOrigin(), grid["origin_mm"], atol=1e-3)
            np.testing.assert_allclose(image.GetSpacing(), grid["spacing_mm"], atol=1e-3)
            np.testing.assert_allclose(image.GetDirection(), grid["direction"], atol=1e-6)
            tags = geometry(items)
            np.testing.assert_allclose(tags["origin"], grid["origin_mm"], atol=1e-3)
            np.testing.assert_allclose(tags["spacing"], grid["spacing_mm"], atol=1e-3)
            np.testing.assert_allclose(tags["steps"], grid["spacing_mm"][2], atol=1e-3)


def test_rtstruct_references_planning_ct_and_contours_match_truth_volumes(patients: list[dict]) -> None:
    """Contours sit on planning-CT slices, reference their SOP instances and enclose the true volumes.

    Volume = sum of polygon areas (shoelace, holes subtracted by the even-odd rule) x slice
    spacing, the planimetric volume a TPS reports; the truth is the same quantity sampled at
    0.5 mm. Contours are traced on a spline-upsampled level set; for cross-sections >= 3 voxels in
    radius that is within 2 %, for thinner ones (spinal cord: 5 mm radius on 4 mm voxels; nodes)
    the spline rounds the cone-shaped level set near its apex, so 5 % is allowed there.
    """
    for p in patients:
        ct = sorted_slices(_find(p["series"], "CT", "Planning"))
        rs = _find(p["series"], "RTSTRUCT", "")[0][1]
        sop_to_k = {str(ds.SOPInstanceUID): k for k, (_, ds) in enumerate(ct)}
        ref_for = rs.ReferencedFrameOfReferenceSequence[0]
        assert ref_for.FrameOfReferenceUID == ct[0][1].FrameOfReferenceUID == rs.FrameOfReferenceUID
        ref_series = ref_for.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
        assert ref_series.SeriesInstanceUID == ct[0][1].SeriesInstanceUID
        assert {str(i.ReferencedSOPInstanceUID) for i in ref_series.ContourImageSequence} == set(sop_to_k)

        spacing_z = geometry(ct)["spacing"][2]
        names = {int(r.ROINumber): str(r.ROIName) for r in rs.StructureSetROISequence}
        by_name = {v["roi_name"]: (k, v["volume_cc"]) for k, v in p["truth"]["structures"].items() if v["contoured"]}
        assert set(names.values()) == set(by_name)
        for roi in rs.ROIContourSequence:
            per_slice: dict[int, list[np.ndarray]] = {}
            for c in roi.ContourSequence:
                k = sop_to_k[str(c.ContourImageSequence[0].ReferencedSOPInstanceUID)]
                pts = np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
                assert int(c.NumberOfContourPoints) == len(pts)
                np.testing.assert_allclose(pts[:, 2], float(ct[k][1].ImagePositionPatient[2]), atol=1e-3)
                per_slice.setdefault(k, []).append(pts[:, :2])
            areas = [_even_odd_area(polys) for polys in per_slice.values()]
            canonical, truth_cc = by_name[names[int(roi.ReferencedROINumber)]]
            radius_voxels = np.sqrt(np.mean(areas) / np.pi) / geometry(ct)["spacing"][0]
            tolerance = 0.02 if radius_voxels >= 3 else 0.05
            area_mm2 = sum(areas)
            assert area_mm2 * spacing_z / 1000.0 == pytest.approx(truth_cc, rel=tolerance), canonical


def _even_odd_area(polygons: list[np.ndarray]) -> float:
    """Area enclosed by planar polygons under the even-odd rule (a polygon inside an odd number of others is a hole)."""
    total = 0.0
    for i, poly in enumerate(polygons):
        x, y = poly[:, 0], poly[:, 1]
        area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
        depth = sum(MplPath(other).contains_point(poly[0]) for j, other in enumerate(polygons) if j != i)
        total += area if depth % 2 == 0 else -area
    return total


def test_gtv_truth_is_consistent_with_analytic_volume(patients: list[dict]) -> None:
    """Fine 0.5 mm raster volume vs the exact quadrature volume of the tumour shape: within 1 %."""
    for p in patients:
        tumour = p["truth"]["tumour"]
        assert tumour["gtv_volume_cc"] == pytest.approx(tumour["analytic_volume_cc"], rel=0.01)
        assert 0 < tumour["boost_volume_cc"] <= tumour["gtv_volume_cc"]
        assert 0 < tumour["hypoxic_fraction"] < 1


def test_pet_suv_at_tumour_matches_truth(patients: list[dict]) -> None:
    """SUV computed from the tags (body weight, dose decayed to series start) reproduces the truth.

    Two measures, each against the noiseless image the generator blurred:
    * the mean over the 3x3x3 voxels at the tumour centre (all tracers): noise is 0.08 sqrt(SUV)
      per voxel, so the mean's relative error is below 2 % (< 0.08 / sqrt(1.5 * 27)); 5 % allowed;
    * FDG SUVmax near the tumour: noise lifts a maximum by 2-3 sigma (~4 % at SUV 10); 10 % allowed.
    Unit, decay or weight mistakes are 30 % to 1000x, far outside both.
    """
    for p in patients:
        for key, label in (("fdg", "FDG PET AC"), ("hx4_2h", "HX4 PET AC"), ("hx4_4h", "HX4 PET AC")):
            truth = p["truth"]["sessions"][key]
            candidates = [items for items in p["series"].values() if items[0][1].Modality == "PT" and label in items[0][1].SeriesDescription]
            items = min(candidates, key=lambda it: abs(float(it[0][1].SeriesTime[:6]) - float(truth["series_datetime"][8:14])))
            suv = volume(items) * suv_factor(items[0][1])
            geo = geometry(items)
            centre_idx = (np.asarray(truth["tumour_centre_session_mm"]) - geo["origin"]) @ geo["direction"] / geo["spacing"]
            i, j, k = np.rint(centre_idx).astype(int)
            assert [i, j, k] == truth["tumour_centre_voxel_ijk"]
            mean = suv[k - 1 : k + 2, j - 1 : j + 2, i - 1 : i + 2].mean()
            assert mean == pytest.approx(truth["tumour_centre_mean_suv_3x3x3_noiseless"], rel=0.05), key
            if key == "fdg":
                box = suv[k - 4 : k + 5, j - 4 : j + 5, i - 4 : i + 5]
                assert box.max() == pytest.approx(truth["tumour_suvmax_blurred_noiseless"], rel=0.10)


def _true_mapping(truth: dict, fixed: sitk.Image) -> np.ndarray:
    """The true planning -> session point of every planning voxel (k, j, i, 3): the session's breathing
    displacement (``Breathing.push`` of the recorded state), then its rigid pose."""
    from isotox.sample.breathing import Breathing

    kk, jj, ii = np.indices(fixed.GetSize()[::-1])
    ijk = np.stack([ii, jj, kk], -1).reshape(-1, 3).astype(float)
    pts = np.asarray(fixed.GetOrigin()) + (ijk * np.asarray(fixed.GetSpacing())) @ np.asarray(fixed.GetDirection()).reshape(3, 3).T
    moved = _pose(truth).apply(Breathing.from_dict(truth["breathing"]["state"]).push(pts, iterations=8))
    return (moved - pts).reshape(tuple(fixed.GetSize()[::-1]) + (3,))


def _resample_field(moving: sitk.Image, fixed: sitk.Image, displacement: np.ndarray) -> np.ndarray:
    field = sitk.GetImageFromArray(displacement.astype(np.float64), isVector=True)
    field.CopyInformation(fixed)
    tx = sitk.DisplacementFieldTransform(field)
    return sitk.GetArrayFromImage(sitk.Resample(moving, fixed, tx, sitk.sitkLinear, np.nan))


def test_pet_ct_pose_is_the_truth_transform(patients: list[dict]) -> None:
    """Resampling the session CT with the true planning->session mapping (breathing, then pose) aligns
    it with the planning CT.

    Measured as the mean absolute HU difference inside the body (edges of lung, bone and body
    dominate it): the true mapping must beat the identity by far, the rigid pose alone (the nearest
    wrong answer: a truth that forgets the breathing, 5-15 mm off at the tumour and the lung bases),
    and the true mapping shifted by 3 mm along each axis, i.e. the truth is right to better than a few
    millimetres everywhere, not only at bone.
    """
    for p in patients:
        planning = volume(_find(p["series"], "CT", "Planning"))
        plan_geo = geometry(_find(p["series"], "CT", "Planning"))
        fixed = sitk.GetImageFromArray(planning)
        fixed.SetOrigin(tuple(plan_geo["origin"]))
        fixed.SetSpacing(tuple(plan_geo["spacing"]))
        fixed.SetDirection(tuple(plan_geo["direction"].ravel()))
        for key, label in (("fdg", "FDG PET/CT"), ("hx4_2h", "HX4 PET/CT"), ("hx4_4h", "HX4 PET/CT")):
            truth = p["truth"]["sessions"][key]
            candidates = [items for items in p["series"].values() if items[0][1].Modality == "CT" and label in items[0][1].SeriesDescription]
            items = next(it for it in candidates if it[0][1].FrameOfReferenceUID == _pet_for(p, truth))
            geo = geometry(items)
            moving = sitk.GetImageFromArray(volume(items))
            moving.SetOrigin(tuple(geo["origin"]))
            moving.SetSpacing(tuple(geo["spacing"]))
            moving.SetDirection(tuple(geo["direction"].ravel()))
            displacement = _true_mapping(truth, fixed)
            aligned = _resample_field(moving, fixed, displacement)
            naive = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, sitk.Transform(), sitk.sitkLinear, np.nan))
            rigid = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, _pose(truth).to_sitk(), sitk.sitkLinear, np.nan))
            # compare only where the resampled images see the patient (session FOV ends differ)
            body = (planning > -500) & np.isfinite(aligned) & np.isfinite(naive) & np.isfinite(rigid)
            err_true = float(np.abs(aligned - planning)[body].mean())
            assert err_true < 0.6 * float(np.abs(naive - planning)[body].mean()), key
            assert err_true < float(np.abs(rigid - planning)[body].mean()), (key, "the rigid pose alone fits as well")
            for axis in range(3):
                shift = np.zeros(3)
                shift[axis] = 3.0
                shifted = _resample_field(moving, fixed, displacement + shift)
                inside = body & np.isfinite(shifted)
                assert float(np.abs(aligned - planning)[inside].mean()) < float(np.abs(shifted - planning)[inside].mean()), (key, axis)


def _pet_for(p: dict, truth: dict) -> str:
    pets = [items[0][1] for items in p["series"].values() if items[0][1].Modality == "PT"]
    pet = min(pets, key=lambda ds: abs(float(ds.SeriesTime[:6]) - float(truth["series_datetime"][8:14])))
    return str(pet.FrameOfReferenceUID)


def test_dce_series_has_frames_and_aortic_enhancement_of_the_truth_aif(patients: list[dict]) -> None:
    """26 frames at the true times, and the arterial voxels carry the generator's aortic curve.

    Arterial voxels: those peaking at the frame of the aorta's true time to peak with an
    enhancement >= 85 % of the 99th percentile of such voxels (pure lumen). Tolerance 12 % of the
    peak: the mean over >= 10 voxels has noise <= 18 HU / sqrt(10) ~ 6 HU (2 % of a ~250 HU peak);
    the rest allows partial volume at the vessel wall. The venous curve (superior vena cava,
    earlier and 1.9x higher: the nearest wrong answer, what the brightest voxels show) lies
    outside the tolerance (asserted).
    """
    for p in patients:
        truth = p["truth"]["perfusion"]
        items = _find(p["series"], "CT", "DCE")
        times = np.asarray(truth["frame_times_s"])
        frames = sorted({int(ds.AcquisitionNumber) for _, ds in items})
        assert frames == list(range(1, times.size + 1))
        per_frame = [volume([it for it in items if int(it[1].AcquisitionNumber) == f]) for f in frames]
        acq = sorted({str(ds.AcquisitionTime) for _, ds in items})
        seconds = np.array([int(t[:2]) * 3600 + int(t[2:4]) * 60 + float(t[4:]) for t in acq])
        np.testing.assert_allclose(seconds - seconds[0], times, atol=1e-3)
        stack = np.stack(per_frame)
        enhancement = stack - stack[:4].mean(axis=0)
        peak, peak_frame = enhancement.max(axis=0), enhancement.argmax(axis=0)
        aortic_frame = int(np.argmin(np.abs(times - truth["blood_pool_peak_s"]["blood"])))
        late = (peak_frame == aortic_frame) & (peak > 50.0)
        blood = late & (peak >= 0.85 * np.percentile(peak[late], 99))
        assert blood.sum() >= 10
        curve = enhancement[:, blood].mean(axis=1)
        expected = np.asarray(truth["blood_curves_hu"]["blood"])
        assert np.abs(curve - expected).max() < 0.12 * expected.max()
        assert np.abs(curve - np.asarray(truth["blood_curves_hu"]["blood_venous"])).max() > 0.12 * expected.max()


def test_dcm2niix_converts_planning_ct_and_pet(patients: list[dict], tmp_path: Path) -> None:
    if shutil.which("dcm2niix") is None:
        pytest.fail("dcm2niix is not installed: pip install -e '.[test]' provides it")
    p = patients[0]
    for label, modality, grid in (("Planning", "CT", p["truth"]["planning_grid"]), ("FDG PET AC", "PT", p["truth"]["sessions"]["fdg"]["pet_grid"])):
        folder = Path(_find(p["series"], modality, label)[0][0]).parent
        out = tmp_path / label.replace(" ", "_")
        out.mkdir()
        proc = subprocess.run(["dcm2niix", "-z", "n", "-o", str(out), str(folder)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        nii = list(out.glob("*.nii"))
        assert len(nii) == 1, proc.stdout
        assert list(sitk.ReadImage(str(nii[0])).GetSize()) == grid["size"]


def test_dciodvfy_finds_no_errors(patients: list[dict]) -> None:
    """dicom3tools' validator on one file of every series (CI installs it: apt-get install dicom3tools)."""
    if shutil.which("dciodvfy") is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy missing in CI: .ci/run must apt-get install dicom3tools")
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools); CI runs this check")
    for items in patients[0]["series"].values():
        proc = subprocess.run(["dciodvfy", str(items[0][0])], capture_output=True, text=True)
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{items[0][1].SeriesDescription}: {errors}"


def test_generation_is_deterministic_byte_for_byte(patients: list[dict], tmp_path: Path) -> None:
    """The library, called again with the workflow's seed, writes identical bytes (UIDs included)."""
    first = patients[0]["folder"]
    again = tmp_path / first.name
    write_sample_patient(again, 1, SAMPLE_SEED, "small")

    def digest(folder: Path) -> dict[str, str]:
        files = [f for f in folder.rglob("*") if f.is_file() and f.name != ".snakemake_timestamp"]  # Snakemake's marker
        return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}

    assert digest(again) == digest(first)


def test_stable_uids_do_not_collide_across_key_boundaries() -> None:
    """("sop", 1, 12) and ("sop", 11, 2) once hashed alike and overwrote DCE frames of 16-slice slabs."""
    from isotox.dicomio.uids import stable_uid

    keys = [("sop", f, k) for f in range(30) for k in range(40)]
    assert len({stable_uid(*key) for key in keys}) == len(keys)
