"""Full fine-tuning of EfficientNet-Lite0/1/2 on waste7 in PyTorch (a GPU makes it minutes; a CPU
runs it too, slower). The result flows back into the Keras/TFLite path: the fine-tuned weights are
written as a legacy-format PyTorch state dict with the ImageNet files' tensor names (and a 7-row
`_fc`), which `convert/efficientnet_lite.py` reads without torch
(`python -m ecosorter.convert.demo.train_demo --from-torch WEIGHTS.pth`).

    python convert/demo/finetune_torch.py --pack build/gpu_pack --out build/torch \
        --backbones efficientnet-lite0,efficientnet-lite1,efficientnet-lite2

The pack (`python -m ecosorter.convert.demo.train_demo --pack build/gpu_pack`) holds the photos
PIL-NEAREST squashed to 260 px (the edge's resize) as JPEG, split.json (train / validation /
held_out, seeded and stratified) and the ImageNet weights as float16 npz. Training never sees the
validation or held-out photos; choices (backbone, epochs) are made on validation only. Beside each
weights file it writes the model's probabilities on validation and held-out photos, computed with
the weights exactly as saved, so the Keras port can be checked against them number by number.

Standalone on purpose (torch, numpy, PIL only): it runs where ecosorter is not installed.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

LABELS = ["kaca", "kardus", "kertas", "khusus", "logam", "organik", "plastik"]
# (expand, kernel, stride) per stage and, per variant, (input side, channels, repeats): as in
# convert/efficientnet_lite.py (read from the shapes in the packages' files).
STAGE_KIND = ((1, 3, 1), (6, 3, 2), (6, 5, 2), (6, 3, 2), (6, 5, 1), (6, 5, 2), (6, 3, 1))
VARIANTS = {
    "efficientnet-lite0": (224, (16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1)),
    "efficientnet-lite1": (240, (16, 24, 40, 80, 112, 192, 320), (1, 3, 3, 4, 4, 5, 1)),
    "efficientnet-lite2": (260, (16, 24, 48, 88, 120, 208, 352), (1, 3, 3, 4, 4, 5, 1)),
}
STEM, HEAD, EPS = 32, 1280, 1e-3


def tf_same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow "same" padding (the weights come from TF checkpoints): extra pixel after."""
    n = x.shape[-1]
    total = max((math.ceil(n / s) - 1) * s + k - n, 0)
    b = total // 2
    return F.pad(x, (b, total - b, b, total - b))


class ConvBN(nn.Module):
    def __init__(self, cin, cout, k, s, groups=1):
        super().__init__()
        self.k, self.s = k, s
        self.conv = nn.Conv2d(cin, cout, k, s, 0, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=EPS, momentum=0.01)

    def forward(self, x):
        return self.bn(self.conv(tf_same_pad(x, self.k, self.s)))


class Block(nn.Module):
    def __init__(self, expand, k, s, cin, cout):
        super().__init__()
        mid = cin * expand
        self.expand = ConvBN(cin, mid, 1, 1) if expand != 1 else None
        self.dw = ConvBN(mid, mid, k, s, groups=mid)
        self.project = ConvBN(mid, cout, 1, 1)
        self.skip = s == 1 and cin == cout

    def forward(self, x):
        y = F.relu6(self.expand(x)) if self.expand is not None else x
        y = self.project(F.relu6(self.dw(y)))
        return x + y if self.skip else y


class Lite(nn.Module):
    def __init__(self, variant: str, num_classes: int, dropout: float):
        super().__init__()
        self.size, chans, reps = VARIANTS[variant]
        self.stem = ConvBN(3, STEM, 3, 2)
        blocks, cin = [], STEM
        for (e, k, s), c, r in zip(STAGE_KIND, chans, reps, strict=True):
            for i in range(r):
                blocks.append(Block(e, k, s if i == 0 else 1, cin, c))
                cin = c
        self.blocks = nn.ModuleList(blocks)
        self.head = ConvBN(cin, HEAD, 1, 1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(HEAD, num_classes)

    def forward(self, x):
        x = F.relu6(self.stem(x))
        for b in self.blocks:
            x = b(x)
        x = F.relu6(self.head(x)).mean((2, 3))
        return self.fc(self.drop(x))

    def name_map(self) -> dict[str, str]:
        """Our parameter/buffer names -> the packages' (lukemelas) names."""
        out = {}

        def bn_conv(ours: str, conv: str, bn: str):
            out[f"{ours}.conv.weight"] = f"{conv}.weight"
            for t in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                out[f"{ours}.bn.{t}"] = f"{bn}.{t}"

        bn_conv("stem", "_conv_stem", "_bn0")
        for i, b in enumerate(self.blocks):
            p = f"_blocks.{i}."
            if b.expand is not None:
                bn_conv(f"blocks.{i}.expand", p + "_expand_conv", p + "_bn0")
            bn_conv(f"blocks.{i}.dw", p + "_depthwise_conv", p + "_bn1")
            bn_conv(f"blocks.{i}.project", p + "_project_conv", p + "_bn2")
        bn_conv("head", "_conv_head", "_bn1")
        out["fc.weight"], out["fc.bias"] = "_fc.weight", "_fc.bias"
        return out

    def load_imagenet(self, state: dict[str, np.ndarray]) -> None:
        own = self.state_dict()
        for ours, theirs in self.name_map().items():
            if ours.startswith("fc."):
                continue  # a new 7-class head
            own[ours].copy_(torch.from_numpy(np.asarray(state[theirs])).to(own[ours].dtype))

    def export_state(self, dtype=torch.float16) -> dict[str, torch.Tensor]:
        own = self.state_dict()
        return {theirs: (own[ours].to(dtype) if own[ours].is_floating_point() else own[ours]).cpu().contiguous()
                for ours, theirs in self.name_map().items()}


def load_pack_images(pack: Path, files: list[str]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(Image.open(pack / "photos" / f).convert("RGB")) for f in files]))


def augment(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """uint8 NHWC batch -> float NCHW at `size`: random crop-zoom (60-100% of the area), small
    rotation, flips, brightness / contrast / saturation; then the "tf" preset (x - 127.5) / 127.5."""
    n, dev = x.shape[0], x.device
    x = x.permute(0, 3, 1, 2).float()

    def u(lo, hi):
        return torch.rand(n, device=dev, generator=gen) * (hi - lo) + lo

    scale = u(0.6, 1.0).sqrt()
    ratio = torch.exp(u(math.log(3 / 4), math.log(4 / 3))).sqrt()
    sx, sy = (scale * ratio).clamp(max=1), (scale / ratio).clamp(max=1)
    ang = u(-0.26, 0.26)
    fx = torch.where(u(0, 1) < 0.5, -1.0, 1.0)
    fy = torch.where(u(0, 1) < 0.5, -1.0, 1.0)
    tx, ty = u(-1, 1) * (1 - sx), u(-1, 1) * (1 - sy)
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([torch.stack([cos * sx * fx, -sin * sy * fy, tx], 1),  # rotation @ diag(scale * flip)
                         torch.stack([sin * sx * fx, cos * sy * fy, ty], 1)], 1)
    grid = F.affine_grid(theta, (n, 3, size, size), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    gray = x.mean(1, keepdim=True)
    x = gray + (x - gray) * u(0.7, 1.3).view(n, 1, 1, 1)  # saturation
    m = x.mean((1, 2, 3), keepdim=True)
    x = (x - m) * u(0.75, 1.25).view(n, 1, 1, 1) + m + u(-30, 30).view(n, 1, 1, 1)
    return (x.clamp(0, 255) - 127.5) / 127.5


def plain(x: torch.Tensor, size: int) -> torch.Tensor:
    """Evaluation input: the pack's 260 px squash, NEAREST to `size` (the edge squashes with NEAREST)."""
    x = x.permute(0, 3, 1, 2).float()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="nearest")
    return (x - 127.5) / 127.5


@torch.no_grad()
def predict(model: Lite, x: torch.Tensor, batch: int = 128) -> np.ndarray:
    model.eval()
    out = [F.softmax(model(plain(x[i:i + batch], model.size)), 1).float().cpu() for i in range(0, len(x), batch)]
    return torch.cat(out).numpy()


def read_weights(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".npz":
        with np.load(path) as z:
            return {k: z[k].astype(np.float32) if z[k].dtype.kind == "f" else z[k] for k in z.files}
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}


def train_one(variant: str, args, data: dict, dev: torch.device, log) -> dict:
    torch.manual_seed(args.seed)
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    model = Lite(variant, len(LABELS), args.dropout)
    model.load_imagenet(read_weights(args.pack / "weights" / f"{variant}.npz"))
    model.to(dev)
    xtr, ytr = data["train"]
    counts = torch.bincount(ytr, minlength=len(LABELS)).float()
    cw = (len(ytr) / (len(LABELS) * counts)).to(dev)
    head = [p for n, p in model.named_parameters() if n.startswith("fc.")]
    body = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
    opt = torch.optim.AdamW([{"params": body, "lr": args.lr}, {"params": head, "lr": args.lr * 10}],
                            weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(ytr) / args.batch)
    total, warm = args.epochs * steps_per_epoch, steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    history, t0 = [], time.time()
    xv, yv = data["validation"]
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(ytr), device=dev, generator=gen)
        tot_loss = 0.0
        for i in range(0, len(ytr), args.batch):
            idx = perm[i:i + args.batch]
            xb = augment(xtr[idx], model.size, gen)
            loss = F.cross_entropy(model(xb), ytr[idx], weight=cw, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.item() * len(idx)
        val_acc = float((predict(model, xv).argmax(1) == yv.cpu().numpy()).mean())
        history.append({"epoch": epoch + 1, "loss": tot_loss / len(ytr), "val_accuracy": val_acc})
        log(f"{variant} epoch {epoch + 1}/{args.epochs} loss {tot_loss / len(ytr):.4f} val {100 * val_acc:.1f}% "
            f"({time.time() - t0:.0f} s)")
    # What is saved is float16 (the output limit); the reference probabilities use exactly those weights.
    state = model.export_state(torch.float16)
    out_file = args.out / f"{variant}{args.tag}.pth"
    torch.save(state, out_file, _use_new_zipfile_serialization=False)
    check = Lite(variant, len(LABELS), args.dropout)
    own = check.state_dict()
    for ours, theirs in check.name_map().items():
        own[ours].copy_(state[theirs].to(own[ours].dtype))
    check.to(dev)
    res = {"variant": variant, "history": history, "seconds": round(time.time() - t0, 1), "weights": out_file.name}
    for part in ("validation", "held_out"):
        x, y = data[part]
        p = predict(check, x)
        res[part] = {"accuracy": float((p.argmax(1) == y.cpu().numpy()).mean()), "images": len(y),
                     "probabilities": np.round(p, 6).tolist()}
    log(f"{variant}: validation {100 * res['validation']['accuracy']:.1f}%, held-out "
        f"{100 * res['held_out']['accuracy']:.1f}% ({res['seconds']:.0f} s)")
    return res


def _subset(files: list[str], limit: int) -> list[str]:
    """Every k-th photo, so a smoke test still has every class."""
    return files[::max(1, len(files) // limit)][:limit] if limit else files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--backbones", default="efficientnet-lite0,efficientnet-lite1,efficientnet-lite2")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--tag", default="", help="suffix of the output files (several recipes in one folder)")
    ap.add_argument("--limit", type=int, default=0, help="N photos of each split only (a smoke test)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    logf = open(args.out / "log.txt", "a")  # noqa: SIM115 (open for the whole run)

    def log(msg: str) -> None:
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    split = json.loads((args.pack / "split.json").read_text())
    data = {}
    for part in ("train", "validation", "held_out"):
        files = _subset(split[part], args.limit)
        y = torch.tensor([LABELS.index(f.split("/")[0]) for f in files])
        data[part] = (load_pack_images(args.pack, files).to(dev), y.to(dev))
    log(f"device {dev}: " + ", ".join(f"{k} {len(v[1])}" for k, v in data.items()))
    results = []
    for variant in args.backbones.split(","):
        try:
            results.append(train_one(variant, args, data, dev, log))
        except Exception as e:  # one failing backbone must not lose the others' results
            log(f"{variant}: FAILED {type(e).__name__}: {e}")
        summary = {"args": {k: str(v) for k, v in vars(args).items()}, "labels": LABELS,
                   "split": {k: _subset(split[k], args.limit) for k in ("validation", "held_out")},
                   "device": str(dev), "torch": torch.__version__, "results": results}
        (args.out / f"results{args.tag}.json").write_text(json.dumps(summary))
    return 0 if results else 1


if __name__ == "__main__":
    raise SystemExit(main())
