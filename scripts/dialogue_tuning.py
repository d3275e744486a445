"""Issue 13: MiniLM's top layers tuned on GoEmotions + DailyDialog, neutral thinning, class-balanced CE
and context variants, each scored on DailyDialog test (tuning head, text only). Uses fdrl's own
functions (`frozen_states`, `join`, `tune`); only the batch assembly is device-resident for speed
(the same values as `Tokens.batch`). Usage: python scripts/dialogue_tuning.py DATA MINILM_FOLDER
(results and the layers of every variant go to $OUT or runs/dialogue/; TINY=300 for a smoke run)."""
import dataclasses, json, os, sys, time
import numpy as np, torch
import fdrl.text
from fdrl import config, metrics
from fdrl.data import load_dailydialog, load_goemotions
from fdrl.inputs import context_window
from fdrl.skips import SkipLog
from fdrl.text import TextEncoder
from fdrl.tune_text import Tokens, frozen_states, join, predict_proba, save, scores, tune

T0 = time.time()
DATA, MODEL = sys.argv[1], sys.argv[2]
OUT = os.environ.get("OUT") or "runs/dialogue"
TINY = int(os.environ.get("TINY", "0"))
DEV = "cuda" if torch.cuda.is_available() else "cpu"
fdrl.text.BATCH_SIZE = 512 if DEV == "cuda" else 64
cfg = config.load()
labels = list(cfg.labels.names); index = {n: i for i, n in enumerate(labels)}; NEUTRAL = index["neutral"]
log = lambda *a: print(f"[{time.time() - T0:6.0f}s]", *a, flush=True)
skips = SkipLog(strict=False)
rng = np.random.default_rng(0)
cut = lambda items: [items[i] for i in sorted(rng.choice(len(items), TINY, replace=False))] if TINY else items
ge = {s: cut(load_goemotions(f"{DATA}/goemotions/{s}.tsv", skips=skips)) for s in ("train", "dev")}
dd = {s: cut(load_dailydialog(f"{DATA}/dailydialog", s, skips)) for s in ("train", "validation", "test")}
log("loaded", {k: len(v) for k, v in ge.items()}, {k: len(v) for k, v in dd.items()})
enc = TextEncoder(MODEL, DEV, cfg.encoders.text_max_tokens)
N_FROZEN = 6 - cfg.tune_text.layers


class GpuTokens(Tokens):
    """Tokens with every row padded into one device tensor: batches are index + slice."""
    def __init__(self, t: Tokens):
        super().__init__(t.states, t.labels, t.own, t.thinned)
        L = max(len(s) for s in t.states)
        self.x = torch.zeros(len(t.states), L, 384, dtype=torch.float16)
        for i, s in enumerate(t.states):
            self.x[i, : len(s)] = torch.from_numpy(s)
        self.x = self.x.to(DEV)
        self.len = torch.tensor([len(s) for s in t.states], device=DEV)
        self.own_t = torch.tensor(t.own if t.own is not None else [len(s) for s in t.states], device=DEV)

    def batch(self, idx):
        i = torch.as_tensor(idx, device=DEV)
        L = int(self.len[i].max())
        return self.x[i, :L].float(), torch.arange(L, device=DEV)[None] < self.len[i][:, None]

    def own_mask(self, idx, length):
        i = torch.as_tensor(idx, device=DEV)
        return torch.arange(length, device=DEV)[None] < self.own_t[i][:, None]


def frozen(items, n_ctx):
    ctx = [context_window(it.context, n_ctx) for it in items] if n_ctx else None
    return frozen_states(enc, [it.text for it in items], [index[it.label] for it in items], N_FROZEN, contexts=ctx)

F = {"ge_train": frozen(ge["train"], 0), "ge_dev": frozen(ge["dev"], 0)}
for n in (0, 2, 4):
    for s in ("train", "validation", "test"):
        F[f"dd_{s}_{n}"] = frozen(dd[s], n)
    log("frozen ctx", n, "mean tokens", np.mean([len(x) for x in F[f"dd_test_{n}"].states]))
G = {k: GpuTokens(v) for k, v in F.items() if k != "ge_train" and not k.startswith("dd_train")}
questions = np.array([it.text.rstrip().endswith("?") for it in dd["test"]])


def report(y, p, prefix):
    pred = p.argmax(1)
    out = scores(y, pred, prefix, NEUTRAL)
    out[prefix + "_per_class"] = {labels[c]: v for c, v in metrics.per_class(y, pred, len(labels)).items()}
    out[prefix + "_confusion"] = metrics.confusion(y, pred, len(labels)).tolist()
    return out


VARIANTS = [  # name, context turns, dialogue_neutral, balanced, with DailyDialog
    ("goemotions-only", 0, 1.0, False, False),
    ("neutral-0.25", 0, 0.25, False, True),
    ("neutral-0.25-ctx2", 2, 0.25, False, True),
    ("neutral-all", 0, 1.0, False, True),
    ("balanced-ce", 0, 1.0, True, True),
    ("neutral-0.10", 0, 0.10, False, True),
    ("neutral-0.25-ctx4", 4, 0.25, False, True),
]
results = {"always_neutral_test": scores(F["dd_test_0"].labels, np.full(len(F["dd_test_0"].labels), NEUTRAL), "test", NEUTRAL)}
for name, n, keep, balanced, with_dd in VARIANTS:
    o = dataclasses.replace(cfg.tune_text, dialogue_neutral=keep, balanced=balanced)
    if with_dd:
        talk = F[f"dd_train_{n}"]; talk.thinned = talk.labels == NEUTRAL
        train = GpuTokens(join(F["ge_train"], talk))
    else:
        train = GpuTokens(F["ge_train"])
    hist, mods = [], {}
    t = time.time()
    w = tune(enc, train, len(labels), o, G["ge_dev"], lambda e, r: hist.append(r), G[f"dd_validation_{n}"], NEUTRAL, DEV, mods)
    del train; torch.cuda.empty_cache() if DEV == "cuda" else None
    r = {"context_turns": n, "dialogue_neutral": keep, "balanced": balanced, "dailydialog": with_dd, "epochs": hist,
         "minutes": (time.time() - t) / 60}
    y = G[f"dd_test_{n}"].labels
    p = predict_proba(mods["layers"], mods["head"], G[f"dd_test_{n}"], DEV)
    r |= report(y, p, "test")
    pred, conf = p.argmax(1), p.max(1)
    neu = y == NEUTRAL
    r["test_neutral_confident_emotion"] = float(np.mean((pred[neu] != NEUTRAL) & (conf[neu] >= 0.5)))
    r["test_neutral_questions"] = {"n": int((neu & questions).sum()),
                                   "pred_neutral": float(np.mean(pred[neu & questions] == NEUTRAL)),
                                   "pred_surprise": float(np.mean(pred[neu & questions] == index["surprise"]))}
    r["test_mean_conf_on_neutral_errors"] = float(conf[neu & (pred != NEUTRAL)].mean()) if (neu & (pred != NEUTRAL)).any() else 0.0
    results[name] = r
    last = hist[-1]
    log(name, f"GE dev {last['dev_macro_f1']:.3f}  DD val {last['dialogue_dev_macro_f1']:.3f}/{last['dialogue_dev_macro_f1_emotions']:.3f} acc {last['dialogue_dev_war']:.3f}"
        f"  DD test acc {r['test_war']:.3f} F1 {r['test_macro_f1']:.3f} F1-emo {r['test_macro_f1_emotions']:.3f}")
    if with_dd:
        meta = {"options": dataclasses.asdict(o), "context_turns": n, "epochs": hist}
        save(__import__("pathlib").Path(OUT) / f"minilm-{name}.safetensors", w, {"fdrl": json.dumps(meta)})
    with open(f"{OUT}/results13.json", "w") as f:
        json.dump(results, f, indent=1)
log("done")
