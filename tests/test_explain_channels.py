"""`delineo explain` on a two-channel model (CT + PET stand-in): every channel is read, as
`delineo predict` reads them (files in channel order, or a folder of case_0000/case_0001), the
map has one volume per channel on the input grid and the per-channel attribution is printed and
saved; a wrong channel count is refused in one sentence. And the typed lesion-occlusion options
(--box, --stride, --connectivity, --min-lesion-size, --min-overlap) equal their --param forms."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from delineo.cli import build_parser, main
from delineo.config import config_from_dict
from delineo.io import read_image
from delineo.train.loop import train

from .conftest import phantom_experiment, write_msd


@pytest.fixture(scope="module")
def two_channel(tmp_path_factory):
    """A 2D U-Net trained for 2 iterations on phantoms whose channel 1 is the negated channel 0."""
    root = tmp_path_factory.mktemp("twoch")
    data = write_msd(root / "data", n=6)
    meta = json.loads((data / "dataset.json").read_text())
    meta["modality"] = {"0": "CT", "1": "PET"}
    (data / "dataset.json").write_text(json.dumps(meta))
    for f in sorted((data / "imagesTr").glob("*_0000.nii.gz")):
        img = nib.load(f)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * -1.0, img.affine), str(f).replace("_0000", "_0001"))
    exp = phantom_experiment(data, epochs=1, iterations_per_epoch=2)
    exp["model"]["act"] = "leakyrelu"
    run = train(config_from_dict(exp), root / "runs", 0, progress=False)
    case = root / "case"
    case.mkdir()
    for c in range(2):
        (case / f"pat_{c:04d}.nii.gz").write_bytes((data / "imagesTr" / f"ph_000_{c:04d}.nii.gz").read_bytes())
    return run, case


def _explain(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["explain", *map(str, argv), "-q"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_two_channel_files_give_a_map_per_channel_and_shares(two_channel, tmp_path, capsys):
    run, case = two_channel
    code, out, err = _explain(capsys, run, case / "pat_0000.nii.gz", case / "pat_0001.nii.gz", "--method", "saliency",
                              "--target", "class", "--label", "1", "--out", tmp_path)
    assert code == 0, err
    m = read_image(tmp_path / "pat_saliency.nii.gz", allow_4d=True)
    src = read_image(case / "pat_0000.nii.gz")
    assert m.array.shape == (2, 24, 28, 20)
    np.testing.assert_allclose(m.affine, src.affine, atol=1e-6)
    assert np.abs(m.array[0]).max() > 0 and np.abs(m.array[1]).max() > 0  # both channels reach the network
    saved = json.loads((tmp_path / "pat_saliency_channels.json").read_text())
    assert saved["channels"] == ["CT", "PET"] and saved["case"] == "pat"
    assert sum(saved["share_outside"]) == pytest.approx(1.0)
    assert all(v > 0 for v in saved["mean_abs"])
    assert "channel 0 (CT): mean |map|" in out and "channel 1 (PET)" in out, out
    # the files' order on the command line does not matter when they are named case_NNNN
    code, _, err = _explain(capsys, run, case / "pat_0001.nii.gz", case / "pat_0000.nii.gz", "--method", "saliency",
                            "--target", "class", "--label", "1", "--out", tmp_path / "swapped")
    assert code == 0, err
    np.testing.assert_array_equal(read_image(tmp_path / "swapped/pat_saliency.nii.gz", allow_4d=True).array, m.array)


def test_a_folder_of_channel_files_is_read_like_predict(two_channel, tmp_path, capsys):
    run, case = two_channel
    code, out, err = _explain(capsys, run, case, "--method", "integrated-gradients", "--param", "steps=2",
                              "--target", "class", "--label", "1", "--out", tmp_path)
    assert code == 0, err
    assert read_image(tmp_path / "pat_integrated-gradients.nii.gz", allow_4d=True).array.shape == (2, 24, 28, 20)
    per = json.loads((tmp_path / "pat_integrated-gradients_channels.json").read_text())
    assert len(per["share_inside"]) == 2 and len(per["share_outside"]) == 2


def test_wrong_channel_count_is_one_sentence(two_channel, tmp_path, capsys):
    run, case = two_channel
    code, out, err = _explain(capsys, run, case / "pat_0000.nii.gz", "--out", tmp_path / "one")
    assert code == 2 and "expects 2 channel(s) (CT, PET), got 1 input(s)" in err, err
    assert "pat_0000.nii.gz" in err and err.count("\n") == 1 and not (tmp_path / "one").exists()
    three = [case / "pat_0000.nii.gz", case / "pat_0001.nii.gz", case / "pat_0000.nii.gz"]
    code, _, err = _explain(capsys, run, *three, "--out", tmp_path / "three")
    assert code == 2 and "got 3 input(s)" in err, err
    other = tmp_path / "two_cases"
    other.mkdir()
    for name in ("a_0000", "a_0001", "b_0000", "b_0001"):
        (other / f"{name}.nii.gz").write_bytes((case / f"pat_{name[-4:]}.nii.gz").read_bytes())
    code, _, err = _explain(capsys, run, other, "--out", tmp_path / "many")
    assert code == 2 and "2 cases (a, b)" in err and "explain takes one case" in err, err


def test_spatial_method_on_two_channels_has_one_map(two_channel, tmp_path, capsys):
    run, case = two_channel
    code, out, err = _explain(capsys, run, case, "--method", "lesion-occlusion", "--box", "8", "--out", tmp_path)
    assert code == 0, err
    assert read_image(tmp_path / "pat_lesion-occlusion.nii.gz").array.shape == (24, 28, 20)
    assert not (tmp_path / "pat_lesion-occlusion_channels.json").exists() and "channel 0" not in out


def test_lesion_occlusion_options_equal_their_param_form(two_channel, tmp_path, capsys):
    run, case = two_channel
    flags = ["--box", "12", "14", "--stride", "12", "--connectivity", "4", "--min-lesion-size", "3", "--label", "1",
             "--threshold", "0.4"]
    params = ["--param", "patch=[12,14]", "--param", "stride=12", "--param", "connectivity=4", "--param", "min_size=3",
              "--param", "label=1", "--param", "threshold=0.4"]
    maps = []
    for name, extra in (("flags", flags), ("params", params)):
        code, _, err = _explain(capsys, run, case, "--method", "lesion-occlusion", *extra, "--out", tmp_path / name)
        assert code == 0, err
        maps.append(read_image(tmp_path / name / "pat_lesion-occlusion.nii.gz").array)
    np.testing.assert_array_equal(maps[0], maps[1])
    code, _, err = _explain(capsys, run, case, "--method", "lesion-occlusion", "--min-overlap", "0.5",
                            "--out", tmp_path / "x")
    assert code == 2 and "--min-overlap" in err and "--reference" in err, err
    code, _, err = _explain(capsys, run, case, "--method", "saliency", "--connectivity", "8", "--out", tmp_path / "y")
    assert code == 2 and "--connectivity: applies to --method lesion-occlusion, not to saliency" in err, err
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["explain", str(run), str(case), "--connectivity", "5"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(["explain", str(run), str(case), "--min-overlap", "1.5"])


def test_help_and_cli_reference_list_the_lesion_options(capsys):
    from delineo.docs_reference import cli_reference

    with pytest.raises(SystemExit):
        build_parser().parse_args(["explain", "--help"])
    text = capsys.readouterr().out
    ref = cli_reference()
    for option in ("--box", "--stride", "--connectivity", "--min-lesion-size", "--min-overlap"):
        assert option in text and f"`{option}`" in ref, option
