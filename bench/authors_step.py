"""The authors' training steps, re-written for timing: the baseline that bench/train_speed.py runs in the same
process as ours, so that "our step / the authors' step" is a ratio measured on one machine under one load.

Self-contained on purpose (torch and timm only, nothing from this repository's models/, losses/ or engine/),
so that the baseline stays the same workload whatever changes in our code: a ratio measured on one commit
compares with a ratio measured on another. What it reproduces of the authors' train_single.py / train_kd.py
(docs/REPRODUCTION.md sections 3-6), per step:

- their DFFNet (PDnet_ResNest_4F_SL_LA): ResNeSt-101 (timm resnest101e, the same architecture) plus the dead
  copy of stages 3 and 4 they build and never call (its parameters sit in Adam's list without gradients);
  RFB reducers, the DFFM that recomputes each chain of x2 upsamplings, side heads and side attention,
  the aggregation, the x4 final upsampling;
- their ECELoss: mean BCE + 0.5 x the DOF-edge dice summed over the batch, the edge filter as a 3x3 conv2d;
  stage 2 weighs the final map 1.1 and resizes each side to the label size;
- stage 2: both teachers' FULL forward passes under no_grad in training mode (the DFFNet teacher with its
  decoder; MiDaS v2.1 with its ResNeXt-101 32x8d encoder and its RefineNet decoder), their four features
  L2-normalised, two adapter sets of 1x1 convolutions, the squared-distance losses, alpha = 3;
- zero_grad, backward, the training MAE read with .item(), clip_gradient (clamp of every gradient),
  torch.optim.Adam with its default (for-each) implementation, the adapters' Adam (lr 0.1, wd 5e-4).
Random weights: speed does not depend on them. The data loader is not part of a step (batches are given).
"""
from __future__ import annotations

import copy

import timm
import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------------------------------- networks


class BasicConv(nn.Sequential):
    """Conv without bias + BatchNorm (their BasicConv2d: its ReLU is built but never called)."""

    def __init__(self, cin: int, cout: int, kernel, padding=0, dilation: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout))


class ReceptiveFieldBlock(nn.Module):
    def __init__(self, cin: int, c: int = 32) -> None:
        super().__init__()
        self.branch0 = BasicConv(cin, c, 1)
        self.branches = nn.ModuleList(
            nn.Sequential(BasicConv(cin, c, 1), BasicConv(c, c, (1, k), padding=(0, k // 2)),
                          BasicConv(c, c, (k, 1), padding=(k // 2, 0)), BasicConv(c, c, 3, padding=k, dilation=k))
            for k in (3, 5, 7))
        self.conv_cat = BasicConv(4 * c, c, 3, padding=1)
        self.conv_res = BasicConv(cin, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cat = torch.cat([self.branch0(x)] + [b(x) for b in self.branches], 1)
        return F.relu(self.conv_cat(cat) + self.conv_res(x))


def up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class Aggregation(nn.Module):
    """DFFM with every x2 chain recomputed, side heads, side attention, coarse-to-fine aggregation."""

    def __init__(self, c: int = 32) -> None:
        super().__init__()
        self.cu1, self.cu2, self.cu3, self.cu4, self.cu6 = (BasicConv(c, c, 3, padding=1) for _ in range(5))
        self.cu5 = BasicConv(2 * c, 2 * c, 3, padding=1)
        self.cu7 = BasicConv(3 * c, 3 * c, 3, padding=1)
        self.cat2 = BasicConv(2 * c, 2 * c, 3, padding=1)
        self.cat3 = BasicConv(3 * c, 3 * c, 3, padding=1)
        self.cat4 = BasicConv(4 * c, 4 * c, 3, padding=1)
        self.conv4 = BasicConv(4 * c, 4 * c, 3, padding=1)
        self.conv5 = nn.Conv2d(4 * c, 1, 1)
        self.sides = nn.ModuleList(nn.Conv2d(c, 1, 1) for _ in range(4))
        self.attention = nn.ModuleList(nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.Sigmoid())
                                       for _ in range(4))

    def forward(self, r4, r3, r2, r1):
        g3 = self.cu1(up2(r4)) * r3
        g2 = self.cu2(up2(up2(r4))) * self.cu3(up2(r3)) * r2
        g1 = self.cu2(up2(up2(up2(r4)))) * self.cu3(up2(up2(r3))) * self.cu6(up2(r2)) * r1
        top = self.cu4(up2(r4))
        sides = [head(f) for head, f in zip(self.sides, (top, g3, g2, g1))]
        top, g3, g2, g1 = (att(s) * f for att, s, f in zip(self.attention, sides, (top, g3, g2, g1)))
        a2 = self.cat2(torch.cat([g3, top], 1))
        a3 = self.cat3(torch.cat([g2, self.cu5(up2(a2))], 1))
        a4 = self.cat4(torch.cat([g1, self.cu7(up2(a3))], 1))
        return self.conv5(self.conv4(a4)), sides


class AuthorsDFFNet(nn.Module):
    """Returns (final logits at the input size, the four raw stage outputs coarse -> fine, four side logits)."""

    def __init__(self, backbone: str = "resnest101e") -> None:
        super().__init__()
        net = timm.create_model(backbone, pretrained=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.act1, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.layer3_2, self.layer4_2 = copy.deepcopy(net.layer3), copy.deepcopy(net.layer4)  # built, never called
        channels = [info["num_chs"] for info in net.feature_info[1:5]]
        self.channels = channels[::-1]   # coarse -> fine
        self.rfbs = nn.ModuleList(ReceptiveFieldBlock(c) for c in channels)
        self.agg = Aggregation()

    def forward(self, x: torch.Tensor):
        l1 = self.layer1(self.stem(x))
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)
        r1, r2, r3, r4 = (rfb(f) for rfb, f in zip(self.rfbs, (l1, l2, l3, l4)))
        logits, sides = self.agg(r4, r3, r2, r1)
        return F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=True), [l4, l3, l2, l1], sides


class ResidualConvUnit(nn.Module):
    def __init__(self, f: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(f, f, 3, padding=1), nn.Conv2d(f, f, 3, padding=1)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x):
        out = self.conv2(self.relu(self.conv1(self.relu(x))))
        return out + x


class FusionBlock(nn.Module):
    def __init__(self, f: int) -> None:
        super().__init__()
        self.rcu1, self.rcu2 = ResidualConvUnit(f), ResidualConvUnit(f)

    def forward(self, x, skip=None):
        if skip is not None:
            x = x + self.rcu1(skip)
        return up2(self.rcu2(x))


class AuthorsMidas(nn.Module):
    """MiDaS v2.1: ResNeXt-101 32x8d encoder, RefineNet decoder; returns (encoder features, depth)."""

    def __init__(self, encoder: str = "resnext101_32x8d", features: int = 256) -> None:
        super().__init__()
        net = timm.create_model(encoder, pretrained=False)
        self.layer1 = nn.Sequential(net.conv1, net.bn1, net.act1, net.maxpool, net.layer1)
        self.layer2, self.layer3, self.layer4 = net.layer2, net.layer3, net.layer4
        channels = [info["num_chs"] for info in net.feature_info[1:5]]
        self.channels = channels[::-1]   # coarse -> fine
        self.rn = nn.ModuleList(nn.Conv2d(c, features, 3, padding=1, bias=False) for c in channels)
        self.refine = nn.ModuleList(FusionBlock(features) for _ in range(4))
        self.head = nn.Sequential(nn.Conv2d(features, features // 2, 3, padding=1),
                                  nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                  nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(True), nn.Conv2d(32, 1, 1),
                                  nn.ReLU(True))

    def forward(self, x):
        l1 = self.layer1(x)
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)
        path = self.refine[3](self.rn[3](l4))
        path = self.refine[2](path, self.rn[2](l3))
        path = self.refine[1](path, self.rn[1](l2))
        path = self.refine[0](path, self.rn[0](l1))
        return [l4, l3, l2, l1], self.head(path).squeeze(1)


class Adapter(nn.Module):
    def __init__(self, channels: list[int], out_channels: list[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, o, 1, bias=False) for c, o in zip(channels, out_channels))
        for conv in self.convs:
            nn.init.xavier_normal_(conv.weight)

    def forward(self, features):
        return [conv(f) for conv, f in zip(self.convs, features)]


# ------------------------------------------------------------------------------------------- loss


class ECELoss(nn.Module):
    """Mean BCE-with-logits + 0.5 x DOF-edge dice (summed over the batch), the filter as a conv2d."""

    def __init__(self, beta: float = 0.5) -> None:
        super().__init__()
        self.beta = beta
        kernel = torch.ones(1, 1, 3, 3)
        kernel[0, 0, 1, 1] = -8.0
        self.register_buffer("kernel", kernel)

    def forward(self, logits, target):
        bce = F.binary_cross_entropy_with_logits(logits, target)
        label_edge = (F.conv2d(target, self.kernel, padding=1) != 0).float()
        e = F.conv2d(torch.sigmoid(logits), self.kernel, padding=1)
        pred_edge = e.pow(2) / (e.pow(2) + 1.0)
        p, q = pred_edge.flatten(1), label_edge.flatten(1)
        dice = 1.0 - (2.0 * (p * q).sum(1) + 1.0) / (p.pow(2).sum(1) + q.pow(2).sum(1) + 1.0)
        return bce + self.beta * dice.sum()


def l2n(f: torch.Tensor) -> torch.Tensor:
    return f / (f.pow(2).sum(1) + 1e-6).sqrt().view(f.size(0), 1, f.size(2), f.size(3))


def clip_gradient(optimizer: torch.optim.Optimizer, clip: float) -> None:
    for group in optimizer.param_groups:
        for param in group["params"]:
            if param.grad is not None:
                param.grad.data.clamp_(-clip, clip)


# ------------------------------------------------------------------------------------------- steps


class AuthorsStage1:
    """train_single.py's step: DFFNet, ECELoss on the final map and the four resized sides, Adam."""

    def __init__(self, backbone: str = "resnest101e") -> None:
        self.model = AuthorsDFFNet(backbone)
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), 1e-4)
        self.criterion = ECELoss()

    def step(self, images: torch.Tensor, gts: torch.Tensor) -> float:
        self.optimizer.zero_grad()
        preds, _, sides = self.model(images)
        loss = self.criterion(preds, gts)
        for side in sides:
            loss = loss + self.criterion(F.interpolate(side, size=gts.shape[-2:], mode="bilinear"), gts)
        loss.backward()
        mae = (torch.sigmoid(preds) - gts).abs().mean().item()
        clip_gradient(self.optimizer, 0.5)
        self.optimizer.step()
        return mae


class AuthorsStage2:
    """train_kd.py's step: the student, both teachers' full forward passes, two adapter sets, alpha = 3."""

    def __init__(self, backbone: str = "resnest101e", midas_encoder: str = "resnext101_32x8d",
                 midas_features: int = 256) -> None:
        self.model = AuthorsDFFNet(backbone)
        self.teacher = AuthorsDFFNet(backbone)
        self.depth = AuthorsMidas(midas_encoder, midas_features)
        for net in (self.model, self.teacher, self.depth):
            net.train()   # the authors never put their teachers in eval mode
        self.adapters = [Adapter(self.model.channels, self.teacher.channels),
                         Adapter(self.model.channels, self.depth.channels)]
        self.optimizer = torch.optim.Adam(self.model.parameters(), 1e-4)
        self.adapter_optimizer = torch.optim.Adam([p for a in self.adapters for p in a.parameters()], lr=1e-1,
                                                  weight_decay=5e-4)
        self.criterion = ECELoss()

    def step(self, images: torch.Tensor, gts: torch.Tensor) -> float:
        self.optimizer.zero_grad()
        self.adapter_optimizer.zero_grad()
        preds, feats, sides = self.model(images)
        with torch.no_grad():
            feat_depth, _ = self.depth(images)
            _, feat_dbd, _ = self.teacher(images)
        dist_dbd = sum((l2n(s) - l2n(t.detach())).pow(2).sum(1).mean()
                       for s, t in zip(self.adapters[0](feats), feat_dbd))
        dist_depth = sum((l2n(s) - l2n(t.detach())).pow(2).sum(1).mean()
                         for s, t in zip(self.adapters[1](feats), feat_depth))
        loss_out = 1.1 * self.criterion(preds, gts)
        for side in sides:
            loss_out = loss_out + self.criterion(F.interpolate(side, size=gts.shape[-2:], mode="bilinear"), gts)
        loss = loss_out + 3.0 * (dist_dbd + dist_depth)
        loss.backward()
        mae = (torch.sigmoid(preds) - gts).abs().mean().item()
        clip_gradient(self.optimizer, 0.5)
        self.optimizer.step()
        self.adapter_optimizer.step()
        return mae


def build_authors_step(stage_name: str, backbone: str = "resnest101e", midas_encoder: str = "resnext101_32x8d",
                       midas_features: int = 256) -> AuthorsStage1 | AuthorsStage2:
    """The authors' step of "stage 1" or "stage 2" with random weights (torch's global generator)."""
    if stage_name == "stage 1":
        return AuthorsStage1(backbone)
    return AuthorsStage2(backbone, midas_encoder, midas_features)
