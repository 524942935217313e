"""The pure parts of images and their housekeeping: requirements, specs, labels, ages, build messages."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import gymnasium
import pytest

from rlmesh.errors import BootstrapError, ImageBuildError, InvalidArgumentError
from rlmesh.sandbox import housekeeping, image
from rlmesh.sandbox.debian_rootfs import suite_for_python
from rlmesh.sandbox.debs import check_system_packages
from rlmesh.sandbox.image import ImageSpec, explain_build_failure, server_requirements
from rlmesh.sandbox.progress import check_progress, status_text

REPO = Path(__file__).resolve().parents[2]


def test_prune_needs_a_criterion_and_an_age() -> None:
    with pytest.raises(InvalidArgumentError):
        housekeeping.parse_age("soon")
    assert housekeeping.parse_age("7d") == 7 * 86400 and housekeeping.parse_age("90") == 90
    result = subprocess.run([sys.executable, "-m", "rlmesh", "image", "prune"], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode != 0 and "say what to prune" in result.stderr


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("12h", 43200), (" 2W ", 1209600),
                                               ("1.5h", 5400), ("0", 0)])
def test_ages_in_each_unit(text: str, seconds: float) -> None:
    assert housekeeping.parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "-1d", "nan", "7y"])
def test_ages_that_are_not(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="an age is a number"):
        housekeeping.parse_age(text)


def test_a_pinned_gymnasium_that_differs_from_the_host_s_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    image._skew_warned.clear()  # other tests may have warned already (once per process)
    caplog.set_level(logging.WARNING, logger="rlmesh.sandbox.image")
    other = "1.3.0" if gymnasium.__version__ != "1.3.0" else "1.2.0"
    uv = ["uvloop"] if importlib.util.find_spec("uvloop") else []
    assert server_requirements([f"gymnasium=={other}"]) == ["numpy", "orjson", "gymnasium>=1.1", *uv]
    server_requirements([f"gymnasium=={other}"])
    warnings = [r.getMessage() for r in caplog.records if "parity" in r.getMessage()]
    assert len(warnings) == 1 and other in warnings[0] and gymnasium.__version__ in warnings[0]
    assert server_requirements(["numpy"]) == ["numpy", "orjson", f"gymnasium=={gymnasium.__version__}", *uv]
    # What admits the host's version gets the host's version: a range, and extras without a version
    # (pip would otherwise take the newest Gymnasium for gymnasium[mujoco]), with no warning.
    host = ["numpy", "orjson", f"gymnasium=={gymnasium.__version__}", *uv]
    caplog.clear()
    assert server_requirements([f"gymnasium>={gymnasium.__version__}"]) == host
    assert server_requirements(["gymnasium[mujoco]"]) == host
    assert server_requirements(["gymnasium[box2d,classic-control]", "minigrid"]) == host
    assert not [r for r in caplog.records if "parity" in r.getMessage()]


def test_an_image_spec_is_checked_and_hashed_by_content(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="packages must be a list"):
        ImageSpec(packages=("",))
    with pytest.raises(InvalidArgumentError, match="not a module name"):
        ImageSpec(imports=("not-a-module",))
    a = ImageSpec(packages=("minigrid",), imports=("minigrid",), source="one")
    assert a.content_hash("sha256:x") == ImageSpec(packages=("minigrid",), imports=("minigrid",),
                                                   source="another").content_hash("sha256:x")  # a label only
    assert a.content_hash("sha256:x") != a.content_hash("sha256:y")
    assert a.content_hash("sha256:x") != ImageSpec(packages=("minigrid",)).content_hash("sha256:x")
    project = tmp_path / "proj"
    project.mkdir()
    (project / "m.py").write_text("x = 1\n")
    local = ImageSpec(packages=(str(project),))
    before = local.content_hash("sha256:x")
    (project / "m.py").write_text("x = 2\n")
    assert local.content_hash("sha256:x") != before  # a local project's files are content


def test_image_labels_are_bounded() -> None:
    labels = housekeeping.image_labels(packages=["p" * 5000], imports=["m"], source="s" * 300, system_packages=["deb"])
    assert labels[housekeeping.LABEL_IMAGE] == "1" and labels["rlmesh.imports"] == '["m"]'
    assert len(labels["rlmesh.packages"]) == 4000 and len(labels["rlmesh.source"]) == 200
    assert labels["rlmesh.system-packages"] == '["deb"]'


def test_a_failed_import_check_leads_with_what_to_add() -> None:
    logs = "Step 9/12 : RUN check\nrlmesh: required import 'gymnasium' failed: ModuleNotFoundError: x. Add the package\n"
    exc = explain_build_failure(ImageBuildError("image build failed: The command returned a non-zero code: 1",
                                                logs=logs))
    assert str(exc).startswith("imports: 'gymnasium' cannot be imported in the sandbox image (ModuleNotFoundError: x)")
    assert "add packages=['gymnasium']" in str(exc) and "(The command returned a non-zero code: 1)" in str(exc)
    plain = ImageBuildError("image build failed: other", logs="pip: no matching distribution")
    assert explain_build_failure(plain) is plain


def test_system_packages_are_debian_names() -> None:
    assert check_system_packages(["libosmesa6", "libgl1=1.6.0-1"]) == ("libosmesa6", "libgl1=1.6.0-1")
    with pytest.raises(InvalidArgumentError, match="must be 'auto' or a list"):
        check_system_packages("libosmesa6")
    for bad in ("Lib", "x", "a b", "-rf", 3):
        with pytest.raises(InvalidArgumentError, match="is not a Debian package name"):
            check_system_packages([bad])


def test_each_python_has_its_debian_suite() -> None:
    assert suite_for_python("3.11") == "bookworm" and suite_for_python("3.11.9") == "bookworm"
    with pytest.raises(BootstrapError, match="no known Debian release ships Python 2.7"):
        suite_for_python("2.7")


def test_progress_option_and_status_lines() -> None:
    assert check_progress(None) is None and check_progress(False) is False and check_progress(print) is print
    with pytest.raises(InvalidArgumentError, match="progress must be"):
        check_progress("yes")
    assert status_text("build", "Step 3/9 : RUN pip install x") == "step 3/9: RUN pip install x"
    assert status_text("build", "Collecting numpy==2.1.0", step="step 3/9") == "step 3/9: collecting numpy==2.1.0"
    assert status_text("resolve", "Saved /w/numpy-2.1.0-cp311-cp311-linux_x86_64.whl") == "saved numpy-2.1.0"
    assert status_text("build", " ---> 1a2b3c") is None
    assert status_text("start", "starting container") == "starting container"


def _import_failure(why: str) -> ImageBuildError:
    logs = f"Step 9/12 : RUN check\nrlmesh: required import 'needs_packaging' failed: {why}. Add the package\n"
    return ImageBuildError("image build failed: The command returned a non-zero code: 1", logs=logs)


def test_the_import_check_names_the_innermost_missing_module() -> None:
    # Meta-World's case: the imported package was there; a dependency of it was not.
    exc = explain_build_failure(_import_failure("ModuleNotFoundError: No module named 'packaging'"),
                                ImageSpec(packages=("needs-packaging",), imports=("needs_packaging",)))
    first = str(exc).splitlines()[0]
    assert "the module 'packaging' (which it imports) is missing: add 'packaging' to your packages list" in first
    assert "provides 'needs_packaging'" not in first  # the old advice


def test_advice_already_taken_is_not_given_again() -> None:
    exc = explain_build_failure(_import_failure("ModuleNotFoundError: No module named 'packaging'"),
                                ImageSpec(packages=("packaging>=23",), imports=("needs_packaging",)))
    first = str(exc).splitlines()[0]
    assert "packages= has 'packaging' already" in first and "add 'packaging'" not in first


def test_a_missing_library_in_the_import_check_gets_the_system_packages_note() -> None:
    why = "ImportError: libX11.so.6: cannot open shared object file: No such file or directory"
    exc = explain_build_failure(_import_failure(why), ImageSpec(imports=("needs_packaging",)))
    assert 'pass system_packages=["libx11-6"]' in str(exc) and "to packages=" not in str(exc).splitlines()[0]
    listed = explain_build_failure(_import_failure(why), ImageSpec(imports=("needs_packaging",),
                                                                   system_packages=("libgl1",)))
    assert 'add "libx11-6" to your system_packages list' in str(listed)  # add to the list, not replace it
    taken = explain_build_failure(_import_failure(why), ImageSpec(imports=("needs_packaging",),
                                                                  system_packages=("libx11-6",)))
    assert "system_packages lists libx11-6 already" in str(taken) and 'add "libx11-6"' not in str(taken)


@pytest.mark.parametrize("entry", ["minatar.gym:register_envs", "a.b", "a:b_2"])
def test_imports_take_a_module_or_a_registration_hook(entry: str) -> None:
    assert ImageSpec(imports=(entry,)).imports == (entry,)


@pytest.mark.parametrize("entry", ["a:", "a:b:c", ":f", "a-b", "a:b.c", "a:1b"])
def test_a_malformed_import_entry_is_refused(entry: str) -> None:
    with pytest.raises(InvalidArgumentError, match="module name or 'module:function'"):
        ImageSpec(imports=(entry,))


def test_the_gl_preset_and_ignored_libraries_change_the_image_key() -> None:
    base = ImageSpec().content_hash("sha256:x")
    assert len({base, ImageSpec(gl="egl").content_hash("sha256:x"), ImageSpec(gl="osmesa").content_hash("sha256:x"),
                ImageSpec(ignore_libraries=("libcuda.so.1",)).content_hash("sha256:x")}) == 4
