"""The registration stage's worker processes (``isotox.registration.parallel``) and the pyramid
helpers of the faster bony stage: cheap unit checks, no sample run needed."""

from __future__ import annotations

import logging
import os
import pickle
import sys

import pytest
import SimpleITK as sitk

from isotox.errors import ConfigError, InputDataError
from isotox.registration.dce import slab_settings
from isotox.registration.parallel import run_sessions
from isotox.registration.rigid import RegistrationSettings, coarse_settings

LOGGER = "isotox.tests.parallel"


def _square(n: int) -> dict[str, int]:
    """A session stand-in: logs, returns its result and the process it ran in."""
    logging.getLogger(LOGGER).info("session %d done", n)
    return {"value": n * n, "pid": os.getpid()}


def _refuse(patient: str) -> dict[str, int]:
    raise InputDataError(patient, "/data/P1/ingest/fdg_ct.nii.gz", "the CT is uniform inside the body", "check the series")


def test_sessions_in_workers_give_the_serial_results_and_their_log(caplog: pytest.LogCaptureFixture) -> None:
    """Two workers return what a serial run returns, ran in other processes, and their log records reach
    this process. Wrong answers rejected: a silently serial run (pid of this process), lost worker logs,
    results swapped between sessions."""
    tasks = {name: (_square, (n,)) for name, n in (("dce", 5), ("fdg", 2), ("hx4_2h", 3), ("hx4_4h", 4))}
    main_file = getattr(sys.modules["__main__"], "__file__", None)
    serial = run_sessions(tasks, 1)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        parallel = run_sessions(tasks, 2)
    assert {k: r["value"] for k, (r, _) in parallel.items()} == {k: r["value"] for k, (r, _) in serial.items()} == {"dce": 25, "fdg": 4, "hx4_2h": 9, "hx4_4h": 16}
    assert all(r["pid"] == os.getpid() for r, _ in serial.values())
    assert all(r["pid"] != os.getpid() for r, _ in parallel.values())
    assert sorted(m.getMessage() for m in caplog.records if m.name == LOGGER) == [f"session {n} done" for n in (2, 3, 4, 5)]
    assert getattr(sys.modules["__main__"], "__file__", None) == main_file  # the main script's file is restored


def test_a_workers_input_error_arrives_with_patient_file_and_fix() -> None:
    """A session's bad-input error raised in a worker reaches the caller as the same InputDataError
    (not a pickling TypeError, not a bare message): patient, file and fix intact."""
    with pytest.raises(InputDataError) as caught:
        run_sessions({"fdg": (_refuse, ("P1",)), "hx4_2h": (_square, (3,))}, 2)
    assert (caught.value.patient, caught.value.file, caught.value.fix) == ("P1", "/data/P1/ingest/fdg_ct.nii.gz", "check the series")
    assert str(caught.value) == "patient P1: /data/P1/ingest/fdg_ct.nii.gz: the CT is uniform inside the body -> check the series"


def test_errors_round_trip_through_pickle() -> None:
    for error in (InputDataError("P2", "rs.dcm", "no GTV", "contour it"), ConfigError("config.yaml", "must be > 0", "registration.iterations")):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error) and back.__dict__ == error.__dict__


def test_slab_pyramid_runs_each_level_once() -> None:
    """An 8-slice DCE slab caps the shrink at 2: (4, 2, 1) becomes (2, 1) with the 2x level's own
    smoothing, not the repeated (2, 2, 1) it was."""
    slab = sitk.Image(96, 96, 8, sitk.sitkFloat32)
    got = slab_settings(RegistrationSettings(shrink_factors=(4, 2, 1), smoothing_sigmas_mm=(4.0, 2.0, 0.0)), slab)
    assert (got.shrink_factors, got.smoothing_sigmas_mm) == ((2, 1), (2.0, 0.0))
    thick = slab_settings(RegistrationSettings(), sitk.Image(96, 96, 40, sitk.sitkFloat32))
    assert (thick.shrink_factors, thick.smoothing_sigmas_mm) == ((4, 2, 1), (4.0, 2.0, 0.0))


def test_bony_body_step_drops_only_the_finest_level() -> None:
    settings = RegistrationSettings(shrink_factors=(4, 2, 1), smoothing_sigmas_mm=(4.0, 2.0, 0.0))
    assert (coarse_settings(settings).shrink_factors, coarse_settings(settings).smoothing_sigmas_mm) == ((4, 2), (4.0, 2.0))
    single = RegistrationSettings(shrink_factors=(1,), smoothing_sigmas_mm=(0.0,))
    assert coarse_settings(single) == single
