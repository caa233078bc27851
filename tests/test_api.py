"""The Python facade: every job is a function on ``hwnas``, and no subpackage shadows one."""

import importlib
import inspect
import pkgutil

import hwnas


def test_jobs_stay_functions_after_every_subpackage_is_imported():
    for mod in pkgutil.walk_packages(hwnas.__path__, "hwnas."):
        if mod.name.startswith("hwnas.cli") or mod.name == "hwnas.__main__":
            continue
        importlib.import_module(mod.name)
    for name in ("profile", "profile_model", "fit_predictor", "predict", "search", "export", "run", "create_supernet"):
        job = getattr(hwnas, name)
        assert inspect.isfunction(job), f"hwnas.{name} is {job!r}: a subpackage shadows the job"
        assert job.__module__ == "hwnas.jobs"


def test_results_are_frozen_dataclasses_with_to_dict():
    import dataclasses

    from hwnas import jobs

    for cls in (jobs.ProfileResult, jobs.ModelProfileResult, jobs.FitResult, jobs.Prediction, jobs.SearchJobResult,
                jobs.ExportResult, jobs.RunResult):
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen and hasattr(cls, "to_dict")
