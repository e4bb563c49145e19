"""Hand-computed values for the official (authors') and standard DBD metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from py_sod_metrics import Emeasure, Smeasure

from metrics.protocol import (OfficialMetrics, StandardMetrics, class_histogram, fbeta, get_protocol,
                              official_iou_size)

EPS = 1e-9


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def f_of(p: float, r: float) -> float:
    return 1.3 * p * r / (0.3 * p + r)


def score(metrics, pairs):
    rows = [metrics.update(pred, gt, f"img{i}") for i, (pred, gt) in enumerate(pairs)]
    return rows, metrics.summary()


# 1 = in-focus in both maps; blur is the positive class of F and IoU.
GT = t([[1, 1], [0, 0]])


def test_perfect_map():
    _, official = score(OfficialMetrics(), [(GT, GT)])
    assert official["mae"] == 0
    assert official["fbeta"] == pytest.approx(1.0, abs=EPS)
    assert official["iou"] == 1.0
    _, standard = score(StandardMetrics(), [(GT, GT)])
    assert (standard["mae"], standard["fbeta"], standard["iou"], standard["max_fbeta"]) == (0, 1, 1, 1)
    big = GT.repeat_interleave(4, 0).repeat_interleave(4, 1)  # S-measure needs non-empty quadrants
    _, standard = score(StandardMetrics(), [(big, big)])
    assert standard["s_measure"] == pytest.approx(1.0, abs=1e-6)
    assert standard["e_measure_max"] == pytest.approx(64 / 63)  # py_sod_metrics divides by N - 1


def test_inverted_map_official_quirk_wins():
    rows, official = score(OfficialMetrics(), [(1 - GT, GT)])
    assert official["mae"] == 1.0
    # blur mask has no true positive (F = 0); the all-blur mask has P = 2/4, R = 1
    assert official["fbeta"] == pytest.approx(f_of(0.5, 1.0), abs=EPS)
    assert official["fbeta_mask"] == 0.0
    assert official["iou"] == 0.0
    _, standard = score(StandardMetrics(), [(1 - GT, GT)])
    assert (standard["mae"], standard["fbeta"], standard["iou"]) == (1.0, 0.0, 0.0)


def test_quirk_wins_on_an_empty_blur_prediction():
    gt = t([[1, 0], [0, 0]])
    pred = t([[0.9, 0.8], [0.7, 0.6]])  # predicts no blur at all
    _, official = score(OfficialMetrics(), [(pred, gt)])
    assert official["fbeta"] == pytest.approx(f_of(0.75, 1.0), abs=EPS)  # 0.7959...
    assert official["fbeta_mask"] == 0.0
    _, standard = score(StandardMetrics(min_max=False), [(pred, gt)])
    assert standard["fbeta"] == 0.0


def test_grey_masks_quirk_loses_and_ties_at_half():
    pred = t([[0.5, 0.875], [0.25, 0.75]])
    gt_binary = t([[1, 1], [0, 0]])
    gt_grey = t([[0.6, 200 / 255], [0.3, 127 / 255]])  # binarised at >= 0.5 -> same as gt_binary
    for gt in (gt_binary, gt_grey):
        rows, official = score(OfficialMetrics(), [(pred, gt)])
        assert official["mae"] == pytest.approx((0.5 + 0.125 + 0.25 + 0.75) / 4, abs=1e-7)
        # F mask {pred < 0.5} = {0.25}: P = 1, R = 1/2 -> 0.8125 beats the all-blur F(1/2, 1) = 0.565
        assert official["fbeta"] == pytest.approx(0.8125, abs=1e-6)
        assert official["fbeta_mask"] == pytest.approx(0.8125, abs=1e-12)
        # IoU mask {pred <= 0.5} also holds the 0.5 pixel: |{0.5, 0.25} & {0.25, 0.75}| / 3
        assert official["iou"] == pytest.approx(1 / 3)
        _, standard = score(StandardMetrics(min_max=False), [(pred, gt)])
        # 8-bit levels 128, 223, 64, 191 (in-focus); |level / 255 - GT|
        assert standard["mae"] == pytest.approx((127 + 32 + 64 + 191) / 255 / 4, abs=1e-12)
        assert standard["fbeta"] == pytest.approx(0.8125, abs=1e-12)
        assert standard["iou"] == pytest.approx(0.5)


def test_all_in_focus_ground_truth():
    gt = torch.ones(2, 2)
    pred = t([[0.9, 0.8], [0.3, 0.6]])
    _, official = score(OfficialMetrics(), [(pred, gt)])
    assert official["mae"] == pytest.approx((0.1 + 0.2 + 0.7 + 0.4) / 4, abs=1e-7)
    assert official["fbeta"] == 0.0  # no blur pixel in the GT: their F is 0 whatever the prediction
    assert official["n_gt_without_blur"] == 1 and official["fbeta_gt_with_blur"] is None
    assert official["iou"] == 0.0
    _, standard = score(StandardMetrics(min_max=False), [(pred, gt)])
    assert standard["fbeta"] == 0.0
    _, standard = score(StandardMetrics(min_max=False), [(t([[0.9, 0.8], [0.7, 0.6]]), gt)])
    assert standard["fbeta"] == 1.0 and standard["iou"] == 1.0  # nothing to find, nothing found


def test_all_blur_ground_truth():
    gt = torch.zeros(2, 2)
    pred = t([[0.25, 0.375], [0.75, 0.875]])
    _, official = score(OfficialMetrics(), [(pred, gt)])
    assert official["mae"] == pytest.approx((0.25 + 0.375 + 0.75 + 0.875) / 4, abs=1e-7)
    assert official["fbeta"] == pytest.approx(1.0, abs=1e-9)  # the all-blur mask is perfect
    assert official["fbeta_mask"] == pytest.approx(0.8125)
    assert official["iou"] == pytest.approx(0.5)
    _, standard = score(StandardMetrics(), [(pred, gt)])
    assert standard["fbeta"] == pytest.approx(0.8125)
    assert standard["max_fbeta"] == 1.0  # threshold 0 marks everything blurred


def test_pooled_iou_differs_from_per_image_mean_on_two_sizes():
    gt_small, pred_small = t([[1, 0], [1, 0]]), t([[1, 0], [1, 0]])  # IoU 1 (2 blur pixels)
    gt_big = torch.ones(4, 4)
    gt_big[:, :2] = 0  # 8 blur pixels
    pred_big = torch.ones(4, 4)
    pred_big[:2, :2] = 0  # 4 of them found: IoU 0.5
    for metrics in (OfficialMetrics(), StandardMetrics()):
        rows, summary = score(metrics, [(pred_small, gt_small), (pred_big, gt_big)])
        assert [row["iou"] for row in rows] == [1.0, 0.5]
        assert summary["iou"] == pytest.approx((2 + 4) / (6 + 10 - 6))  # pooled 0.6, not the mean 0.75


def test_ebd_iou_at_320_by_nearest_resize():
    assert official_iou_size("EBD") == (320, 320) and official_iou_size("EBD-1305") == (320, 320)
    assert official_iou_size("CUHK-TE-1") is None and get_protocol("official").metrics("DUT-TE").iou_size is None
    gt = torch.zeros(640, 640)  # all blurred
    pred = torch.ones(640, 640)
    pred[:, 1::2] = 0  # odd columns predicted blurred; nearest 640 -> 320 keeps the even ones
    _, full = score(get_protocol("official").metrics("CUHK-TE-1"), [(pred, gt)])
    _, ebd = score(get_protocol("official").metrics("EBD"), [(pred, gt)])
    assert full["iou"] == 0.5 and ebd["iou"] == 0.0 and ebd["iou_resolution"] == "320x320"
    for summary in (full, ebd):  # MAE and F stay at the original resolution
        assert summary["mae"] == pytest.approx(0.5)
        assert summary["fbeta"] == pytest.approx(1.0, abs=1e-9)


def test_size_mismatch_excluded_under_official_kept_under_standard():
    good_pred, good_gt = GT.clone(), GT.clone()
    small_pred, big_gt = torch.full((2, 2), 0.25), torch.zeros(4, 4)
    rows, official = score(OfficialMetrics(), [(good_pred, good_gt), (small_pred, big_gt)])
    assert official["n_images"] == 1 and official["mae"] == 0
    assert official["excluded"] == [{"name": "img1", "reason": rows[1]["excluded"]}]
    assert "4x4" in rows[1]["excluded"] and "2x2" in rows[1]["excluded"] and rows[1]["mae"] is None
    rows, standard = score(StandardMetrics(), [(good_pred, good_gt), (small_pred, big_gt)])
    assert standard["n_images"] == 2 and standard["resized_to_gt"] == ["img1"]
    assert rows[1]["mae"] == pytest.approx(64 / 255)  # bilinear keeps the constant 0.25 -> level 64
    assert rows[1]["fbeta"] == 1.0
    with pytest.raises(ValueError, match="no image was scored"):
        score(OfficialMetrics(), [(small_pred, big_gt)])


def test_standard_threshold_sweep_and_pr_curve():
    pred, gt = t([[0.0, 1.0]]), t([[0.0, 1.0]])  # blur levels 255 and 0
    _, standard = score(StandardMetrics(), [(pred, gt)])
    f_threshold_0 = f_of(0.5, 1.0)  # k = 0 marks both pixels blurred
    assert standard["max_fbeta"] == 1.0
    assert standard["mean_fbeta"] == pytest.approx((f_threshold_0 + 255) / 256)
    pr = standard["pr_curve"]
    assert pr["precision"][0] == 0.5 and pr["recall"][0] == 1.0
    assert set(pr["precision"][1:]) == {1.0} and set(pr["recall"][1:]) == {1.0}


def test_pooled_pr_curve_equals_concatenated_pixels():
    rng = np.random.default_rng(0)
    maps = [(rng.random((h, w)).astype(np.float32), rng.random((h, w)) > 0.4) for h, w in [(5, 7), (9, 4), (6, 6)]]
    metrics = OfficialMetrics()
    for i, (pred, gt) in enumerate(maps):
        metrics.update(torch.from_numpy(pred), torch.from_numpy(gt.astype(np.float32)), f"m{i}")
    pr = metrics.summary()["pr_curve"]
    blur_level = np.concatenate([255 - np.round(p * 255).ravel() for p, _ in maps])
    blur_gt = np.concatenate([~g.ravel() for _, g in maps])
    for k in (0, 1, 77, 128, 200, 255):
        predicted = blur_level >= k
        tp = np.count_nonzero(predicted & blur_gt)
        assert pr["recall"][k] == pytest.approx(tp / blur_gt.sum())
        assert pr["precision"][k] == pytest.approx(tp / predicted.sum() if predicted.any() else 1.0)


def authors_f_score1(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """The protocol's F_score1 written out: binarise at >= 0.5, invert both, sweep 255 thresholds, max."""
    binary = (pred >= 0.5).float()
    y_pred, y = 1 - binary, 1 - gt
    best = 0.0
    for threshold in torch.linspace(0, 1, 255):
        y_temp = (y_pred >= threshold).float()
        tp = (y_temp * y).sum()
        p, r = tp / (y_temp.sum() + 1e-20), tp / (y.sum() + 1e-20)
        f = (1.3 * p * r / (0.3 * p + r + 1e-10)).item()
        best = max(best, 0.0 if f != f else f)
    return best


def test_official_matches_a_direct_transcription_of_the_authors_loops():
    gen = torch.Generator().manual_seed(3)
    metrics, images = OfficialMetrics(), []
    for i, (h, w) in enumerate([(6, 5), (4, 8), (7, 7), (3, 3)]):
        pred = torch.rand(h, w, generator=gen)
        gt = (torch.rand(h, w, generator=gen) > (0.3 if i else -1.0)).float()  # image 0: no blurred pixel
        images.append((pred, gt))
        row = metrics.update(pred, gt, f"r{i}")
        assert row["fbeta"] == pytest.approx(authors_f_score1(pred, gt), abs=1e-6)
        assert row["mae"] == pytest.approx((pred - gt).abs().mean().item(), abs=1e-6)
    blur_pred = torch.cat([(1 - (p > 0.5).float()).flatten() for p, _ in images]) == 1
    blur_gt = torch.cat([(1 - (g > 0.5).float()).flatten() for _, g in images]) == 1
    inter = (blur_pred & blur_gt).sum().item()
    summary = metrics.summary()
    assert summary["iou"] == pytest.approx(inter / (blur_pred.sum().item() + blur_gt.sum().item() - inter))
    assert summary["n_gt_without_blur"] == 1


def test_histogram_levels_split_exactly_at_half():
    bits = np.arange(np.float32(0.49).view(np.int32), np.float32(0.51).view(np.int32), dtype=np.int32)
    pred = torch.from_numpy(bits.view(np.float32).copy())
    hist = class_histogram(pred, torch.zeros_like(pred, dtype=torch.bool))
    assert hist[0, 128:].sum().item() == int((pred < 0.5).sum())  # blur level >= 128 <=> pred < 0.5
    gt = torch.ones(1, 3)
    rows, _ = score(OfficialMetrics(), [(t([[np.nextafter(np.float32(0.5), np.float32(0)), 0.5,
                                              np.nextafter(np.float32(0.5), np.float32(1))]]), 1 - gt)])
    assert rows[0]["fbeta_mask"] == pytest.approx(f_of(1, 1 / 3))  # only the value below 0.5 is blur for F
    assert rows[0]["iou"] == pytest.approx(2 / 3)  # 0.5 itself is blur for IoU (strict > 0.5 = in-focus)


def test_standard_structure_measures_come_from_py_sod_metrics_with_blur_foreground():
    gen = torch.Generator().manual_seed(5)
    pred = torch.rand(12, 10, generator=gen)
    gt = (torch.rand(12, 10, generator=gen) > 0.5).float()
    _, standard = score(StandardMetrics(min_max=False), [(pred, gt)])
    blur_score = (255 - torch.round(pred * 255)).double().numpy() / 255
    s, e = Smeasure(), Emeasure()
    s.step(blur_score, gt.numpy() < 0.5, normalize=False)
    e.step(blur_score, gt.numpy() < 0.5, normalize=False)
    assert standard["s_measure"] == pytest.approx(s.get_results()["sm"])
    assert standard["e_measure_max"] == pytest.approx(np.max(e.get_results()["em"]["curve"]))


def test_fbeta_formula_and_bad_inputs():
    assert fbeta(0.0, 0.0) == 0.0 and fbeta(1.0, 1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown protocol"):
        get_protocol("paper").metrics("CUHK-TE-1")
    with pytest.raises(ValueError, match="bad.png: prediction must have shape"):
        OfficialMetrics().update(torch.zeros(2, 2, 2), torch.zeros(2, 2), "bad.png")


def test_standard_normalises_each_map_like_py_sod_metrics_by_default():
    """Issue 13 item 17: the standard protocol scores the per-map min-max normalised map, as pysodmetrics'
    defaults (and PySODEvalToolkit) do; --raw-maps keeps the raw variant."""
    from py_sod_metrics import MAE, Fmeasure, FmeasureV2, FmeasureHandler

    gen = torch.Generator().manual_seed(7)
    metrics = get_protocol("standard").metrics("DUT-TE")
    mae, e, s = MAE(), Emeasure(), Smeasure()
    fm = FmeasureV2({"fm": FmeasureHandler(with_dynamic=True, with_adaptive=False)})
    with pytest.warns(UserWarning, match="FmeasureV2"):
        fm_v1 = Fmeasure()
    rows, maps = [], []
    for h, w in [(13, 11), (9, 16), (20, 20)]:
        pred = 0.2 + 0.5 * torch.rand(h, w, generator=gen)  # in-focus scores in [0.2, 0.7]: far from [0, 1]
        gt = (torch.rand(h, w, generator=gen) > 0.4).float()
        maps.append((pred, gt))
        rows.append(metrics.update(pred, gt, "img"))
        blur_u8 = (255 - torch.round(pred * 255)).to(torch.uint8).numpy()  # the saved map, blur = white
        gt_u8 = ((gt < 0.5).to(torch.uint8) * 255).numpy()
        for tool in (mae, fm, fm_v1, e, s):
            tool.step(blur_u8, gt_u8)  # py_sod_metrics' defaults: normalize=True
        assert rows[-1]["mae"] == pytest.approx(mae.maes[-1], abs=1e-12)
        assert rows[-1]["s_measure"] == pytest.approx(s.sms[-1], abs=1e-12)
    summary = metrics.summary()
    curve = fm.get_results()["fm"]["dynamic"]
    assert summary["map_normalisation"] == "min-max"
    assert summary["mae"] == pytest.approx(mae.get_results()["mae"], abs=1e-12)
    assert summary["max_fbeta"] == pytest.approx(curve.max(), abs=1e-12)
    assert summary["mean_fbeta"] == pytest.approx(curve.mean(), abs=1e-12)
    assert summary["max_fbeta"] == pytest.approx(fm_v1.get_results()["fm"]["curve"].max(), abs=1e-12)
    assert summary["s_measure"] == pytest.approx(s.get_results()["sm"], abs=1e-12)
    assert summary["e_measure_max"] == pytest.approx(e.get_results()["em"]["curve"].max(), abs=1e-12)
    assert summary["e_measure_mean"] == pytest.approx(e.get_results()["em"]["curve"].mean(), abs=1e-12)
    _, raw_summary = score(get_protocol("standard", raw_maps=True).metrics("DUT-TE"), maps)
    assert raw_summary["map_normalisation"] == "none" and abs(raw_summary["mae"] - summary["mae"]) > 0.01
    with pytest.raises(ValueError, match="raw maps apply to the standard protocol"):
        get_protocol("official", raw_maps=True)


def test_s_measure_is_defined_when_the_blur_centroid_empties_a_quadrant():
    """Issue 13 item 18: pysodmetrics' S-measure is NaN when the GT's blur centroid lies in the last row (its
    bottom quadrants are empty); an empty quadrant has area weight 0 and adds nothing here."""
    gt = torch.ones(8, 6)
    gt[7, :] = 0  # blurred: the last row only
    ramp, constant = torch.linspace(0, 1, 48).reshape(8, 6), torch.full((8, 6), 0.4)
    for pred in (ramp, constant):  # min-max leaves both as they are: the ramp spans [0, 1], the other is constant
        blur = (255 - torch.round(pred * 255)).double().numpy() / 255
        upstream = Smeasure()
        with pytest.warns(RuntimeWarning):
            upstream.step(blur, gt.numpy() < 0.5, normalize=False)
        assert np.isnan(upstream.sms[-1])
        blur_gt = gt.numpy() < 0.5
        cy, cx = 8, int(np.argwhere(blur_gt).mean(axis=0).round()[1]) + 1
        region = (upstream.ssim(blur[:cy, :cx], blur_gt[:cy, :cx]) * cx / 6
                  + upstream.ssim(blur[:cy, cx:], blur_gt[:cy, cx:]) * (6 - cx) / 6)
        expected = max(0.0, 0.5 * upstream.object(blur, blur_gt) + 0.5 * region)
        rows, summary = score(StandardMetrics(), [(pred, gt)])
        assert rows[0]["s_measure"] == pytest.approx(expected, abs=1e-12)
        assert np.isfinite(summary["s_measure"]) and summary["s_measure"] == pytest.approx(expected, abs=1e-12)
