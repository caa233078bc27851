"""Job commands registered on the ``hwnas`` app (kept apart from main.py to keep imports lazy)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from hwnas.cli.common import COUNT, SECONDS, SEED, emit, engine_table, number, parse_input_shapes, progress_bar
from hwnas.cli.main import JSON_OPT, app, supernet_app


@supernet_app.command("train")
def supernet_train_cmd(
    out: Path = typer.Option(Path("runs/supernet"), "-o", "--out", help="Run directory (checkpoint, log, weights)."),
    supernet: str = typer.Option("mbv3_fmnist", help="Supernet family (a Fashion-MNIST family)."),
    epochs: int = typer.Option(7, help="Epochs over the 55,000-image training split.", callback=COUNT),
    batch_size: int = typer.Option(128, callback=COUNT),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate [default: the family's recipe: 0.1 SGD for "
                                       "CNNs, 1e-3 AdamW for vit_fmnist].", callback=number(0, lo_open=True)),
    optimizer: Optional[str] = typer.Option(None, help="sgd | adamw [default: the family's recipe]."),
    n_random: int = typer.Option(1, help="Random subnets per step besides the largest and smallest.",
                                 callback=number(0)),
    seed: int = typer.Option(0, callback=SEED),
    data: Optional[Path] = typer.Option(None, help="Fashion-MNIST IDX directory."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    nproc: Optional[int] = typer.Option(None, "--nproc", help="Train on N processes that share each global batch "
                                        "(torch.distributed under torchrun: gloo on CPU, nccl on one GPU each); "
                                        "they train what one process trains, from and to the same checkpoints.",
                                        callback=COUNT),
    json_: bool = JSON_OPT,
) -> None:
    """Sandwich-rule training with in-place distillation; resumes from OUT/checkpoint.pt if present.

    Also runs under ``torchrun --nproc-per-node N -m hwnas supernet train ...``, as ``--nproc N`` does."""
    from hwnas.errors import OptionValueError
    from hwnas.supernet.distributed import check_launch, launch, launched_rank
    from hwnas.supernet.train import TrainConfig, check_resumable, train_supernet

    cfg = TrainConfig.for_family(supernet, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                                 n_random=n_random, seed=seed, device=device)
    world_size, rank = launched_rank()
    if nproc is not None and nproc > 1:
        if world_size > 1:
            raise OptionValueError("--nproc starts the processes itself; leave it out under torchrun")
        check_launch(device, cfg.batch_size, nproc)  # one line here rather than one per worker
        check_resumable(cfg, out)
        args = ["supernet", "train", "--out", str(out), "--supernet", supernet, "--epochs", str(epochs),
                "--batch-size", str(batch_size), "--n-random", str(n_random), "--seed", str(seed), "--device", device]
        args += ["--lr", repr(lr)] if lr is not None else []
        args += ["--optimizer", optimizer] if optimizer is not None else []
        args += ["--data", str(data)] if data else []
        launch(nproc, args + (["--json"] if json_ else []))  # rank 0 prints the result
        return
    with progress_bar("training", None, enabled=not json_ and rank == 0) as update:
        res = train_supernet(cfg, out, str(data) if data else None,
                             progress=lambda s, t, info: update(s, t, f"epoch {info['epoch']} loss {info['loss']:.3f}"))
    if rank != 0:
        return
    emit(res, json_, lambda r: typer.echo(
        f"trained in {r['train_seconds']:.0f} s: val top-1 largest {r['val_top1_max']:.4f}, smallest "
        f"{r['val_top1_min']:.4f}; weights {out / 'supernet.pt'}"))


@supernet_app.command("eval")
def supernet_eval_cmd(
    arch: Optional[str] = typer.Option(None, "--arch", help="Arch JSON file or inline JSON."),
    samples: int = typer.Option(0, help="Evaluate N sampled archs (plus min and max) and store them.",
                                callback=number(0)),
    split: str = typer.Option("val", help="val | test (test: final figures only)."),
    supernet: str = typer.Option("mbv3_fmnist"),
    weights: Optional[Path] = typer.Option(None, help="Supernet weights (default: shipped)."),
    store: Path = typer.Option(Path("hwnas-out/store.sqlite"), help="Measurement/accuracy store."),
    seed: int = typer.Option(0, callback=SEED),
    data: Optional[Path] = typer.Option(None, help="Your data: an image folder (one folder per class), train/ and "
                                                   "val/ folders, an .npz of images and labels, or a Fashion-MNIST "
                                                   "IDX directory (default: the family's shipped set)."),
    workers: int = typer.Option(0, help="With --samples: evaluate on N Ray workers at once (a GPU each when the "
                                "cluster has them; needs hwnas[ray]); 0: in this process.", callback=number(0)),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address for --workers [default: "
                                              "$HWNAS_RAY_ADDRESS, else a local Ray instance]."),
    json_: bool = JSON_OPT,
) -> None:
    """BN recalibration then top-1 of one arch, or of N sampled archs written to the store."""
    from hwnas.supernet.accuracy import evaluate_job

    with progress_bar("evaluating", samples + 2 if samples else 1, enabled=not json_) as update:
        res = evaluate_job(supernet=supernet, weights=str(weights) if weights else None, arch=arch,
                           samples=samples, split=split, store_path=store, seed=seed,
                           data_dir=str(data) if data else None, progress=update, workers=workers,
                           ray_address=ray_address)

    def human(r):
        if "accuracy" in r:
            typer.echo(f"{r['arch_id']}: top-1 {r['accuracy']:.4f} on {r['split']} ({r['n_images']} images)")
        else:
            typer.echo(f"evaluated {r['evaluated']} archs on {r['split']} ({r['skipped']} already stored) in "
                       f"{r['seconds']:.0f} s ({r['archs_per_minute']:.1f} archs/min); top-1 min/median/max "
                       f"{r['acc_min']:.4f}/{r['acc_median']:.4f}/{r['acc_max']:.4f}; store {r['store']}"
                       + (f"; {r['workers']} Ray workers" if r.get("workers") else ""))
            for t in r.get("retried") or []:
                typer.echo(f"  retried {t['arch_id']}: its worker died ({t['reason']})")

    emit(res, json_, human)


agent_app = typer.Typer(help="The measurement agent that runs on an edge board.", no_args_is_help=True)
app.add_typer(agent_app, name="agent")


@app.command("devices")
def devices_cmd(json_: bool = JSON_OPT) -> None:
    """List device specs and whether each can run here (and if not, why)."""
    from hwnas.devices import list_devices

    rows = [d.to_dict() for d in list_devices()]

    def human(rs):
        for r in rs:
            state = ("ok" if r["available"] else f"invalid: {r['reason']}" if r.get("invalid")
                     else f"unavailable: {r['reason']}")
            typer.echo(f"{r['name']:<12} {'-' if r.get('invalid') else r['backend']:<10} {state}")

    emit(rows, json_, human)


@agent_app.command("serve")
def agent_serve_cmd(
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback unless told otherwise)."),
    port: int = typer.Option(8765, callback=number(0, 65535)),
    token: Optional[str] = typer.Option(None, help="Token (default: $HWNAS_AGENT_TOKEN); ps shows it, prefer --token-file."),
    token_file: Optional[Path] = typer.Option(None, help="File holding the token (mode 600)."),
    insecure_no_token: bool = typer.Option(False, "--insecure-no-token", help="Serve without authentication."),
    max_upload_mb: float = typer.Option(256.0, help="Largest model accepted.", callback=number(0, lo_open=True)),
    max_queue: int = typer.Option(8, help="Uploads admitted at once (uploading, waiting or measuring); more get 503.", callback=COUNT),
    queue_timeout_s: float = typer.Option(300.0, help="Longest wait for the running measurement.", callback=SECONDS),
    max_time_cap_s: float = typer.Option(120.0, help="Largest time_cap_s a request may ask for.", callback=SECONDS),
    request_timeout_s: float = typer.Option(60.0, help="A whole request (headers and body) must arrive within this.", callback=SECONDS),
    max_connections: int = typer.Option(64, help="Connections open at once; more get 503.", callback=number(2)),
    measure_grace_s: float = typer.Option(2.0, help="A measurement is stopped 2 x time_cap_s + this after its model loaded.", callback=number(0)),
    tls_cert: Optional[Path] = typer.Option(None, help="Serve HTTPS with this certificate (PEM)."),
    tls_key: Optional[Path] = typer.Option(None, help="The certificate's private key (PEM)."),
) -> None:
    """Serve measurement requests (POST /measure with an ONNX model); GET /health answers without a token."""
    from hwnas.devices.agent import serve

    serve(host=host, port=port, token=token, token_file=token_file, insecure_no_token=insecure_no_token,
          max_upload_mb=max_upload_mb, max_queue=max_queue, queue_timeout_s=queue_timeout_s,
          max_time_cap_s=max_time_cap_s, request_timeout_s=request_timeout_s, max_connections=max_connections,
          measure_grace_s=measure_grace_s, tls_cert=tls_cert, tls_key=tls_key,
          ready=lambda srv: typer.echo(f"hwnas agent listening on {srv.url}", err=True))


@app.command("profile")
def profile_cmd(
    model: Optional[Path] = typer.Argument(None, help="Measure this ONNX file instead of supernet subnets."),
    device: Optional[list[str]] = typer.Option(None, "--device", "-d", help="Device spec name or .toml path "
                                               "[default: ort-cpu-1t]; repeat it to profile several boards at "
                                               "once on Ray (boards of one kind share the work)."),
    supernet: str = typer.Option("mbv3_fmnist", help="Supernet family whose subnets to profile."),
    samples: int = typer.Option(100, help="Subnets to measure (stratified small/medium/large; min and max included).",
                                callback=number(2)),
    fleet: Optional[Path] = typer.Option(None, help="A fleet file (TOML: devices = [...], optional ray_address) "
                                         "naming the boards to profile at once on Ray."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address for a fleet [default: "
                                              "$HWNAS_RAY_ADDRESS, else a local Ray instance for this job]."),
    board_wait: float = typer.Option(120.0, help="Fleet: seconds a device kind may have no board answering before "
                                     "its remaining subnets are left for a rerun.", callback=SECONDS),
    weights: Optional[Path] = typer.Option(None, help="Weights (latency does not depend on them)."),
    store: Path = typer.Option(Path("hwnas-out/store.sqlite"), help="SQLite measurement store."),
    seed: int = typer.Option(0, callback=SEED),
    time_cap: Optional[float] = typer.Option(None, help="Seconds of timed runs per subnet (default: the spec's).",
                                             callback=SECONDS),
    input_shape: Optional[list[str]] = typer.Option(None, "--input-shape", metavar="NAME:1x3x224x224",
                                                    help="With MODEL: the shape of an input with dynamic "
                                                         "dimensions (trtexec's --shapes); repeat it or separate "
                                                         "inputs by commas."),
    json_: bool = JSON_OPT,
) -> None:
    """Profile a device: measure real latency of exported subnets (resumable) into the store."""
    import hwnas.jobs as jobs
    from hwnas.errors import OptionValueError

    shapes = parse_input_shapes(input_shape)
    devices = list(device or [])
    many = len(devices) > 1 or fleet is not None or ray_address is not None
    if model is not None and many:
        raise OptionValueError("a MODEL file is measured on one device; give one --device (no --fleet)")
    if not many:
        device = devices[0] if devices else "ort-cpu-1t"
    if shapes is not None and model is None:
        raise OptionValueError("--input-shape sets the input shape of an ONNX MODEL; pass the model "
                               "(hwnas profile model.onnx --input-shape ...)")
    if model is not None:
        res1 = jobs.profile_model(model, device, store=store, time_cap_s=time_cap, input_shape=shapes).to_dict()

        def human1(r):
            m = r["measurement"]
            typer.echo(f"{r['model']} on {r['device']}: median {m['median_ms']:.3f} ms, p90 {m['p90_ms']:.3f} ms, "
                       f"IQR {m['iqr_ms']:.3f} ms, n={m['n']}, CV {m['cv']:.3f} ({m.get('scale') or 'isolated'} scale: this file alone, lower quartile of its 30-run window medians)")

        emit(res1, json_, human1)
        return
    if many:
        _profile_fleet_cmd(jobs, devices, fleet, ray_address, board_wait, supernet, samples, store, weights, seed,
                           time_cap, json_)
        return
    with progress_bar(f"profiling {device}", samples, enabled=not json_) as update:
        res = jobs.profile(device, supernet, samples, store=store, weights=weights, seed=seed, time_cap_s=time_cap,
                           progress=lambda ev: update(ev.done, ev.total, f"{ev.arch_id[:28]:<28}")).to_dict()

    def human(r):
        rate = (f" ({r['subnets_per_min']:.1f} subnets/min, overhead x{r['overhead']:.1f})"
                if r.get("overhead") else "")
        typer.echo(f"{r['device']}: {r['measured']} measured, {r['skipped']} already in store, "
                   f"{len(r['failed'])} failed in {r['wall_s']:.0f} s{rate}; store {r['store']}")
        if r.get("anchor"):
            a = r["anchor"]
            c = r.get("calibration") or {}
            note = ""
            if c.get("action") == "calibrated":
                note = (f" (calibrated in this run: {c['bursts']} bursts of the anchor alone over {c['span_s']:.0f} s, "
                        f"lower quartile of {c['windows']} windows)")
            elif c.get("drift") is not None:
                note = f" (this run's check: {100 * c['drift']:+.1f}%, {c['action']})"
            typer.echo(f"anchored timing: reference subnet {a['arch_id']}, calibrated at {a['anchor_ms']:.4g} ms{note}")
        for w in r.get("warnings") or []:
            typer.echo(f"warning: {w}", err=True)

    emit(res, json_, human)


def _profile_fleet_cmd(jobs, devices, fleet, ray_address, board_wait, supernet, samples, store, weights, seed,
                       time_cap, json_) -> None:
    """``hwnas profile`` over several boards (Ray)."""
    done = [0]

    def tick(update, ev):
        done[0] += 1  # events come in the order the boards finish, one per subnet
        update(done[0], ev.total, f"{ev.arch_id[:24]:<24} {ev.status}" + (f" on {ev.board}" if ev.board else ""))

    label = ", ".join(devices) or str(fleet)
    with progress_bar(f"profiling {label}", None, enabled=not json_) as update:
        res = jobs.profile(devices, supernet, samples, store=store, weights=weights, seed=seed,
                           time_cap_s=time_cap, fleet=fleet, ray_address=ray_address, board_wait_s=board_wait,
                           progress=lambda ev: tick(update, ev)).to_dict()

    def human(r):
        ray = r["ray"]
        where = f"a local instance, started in {ray['start_s']:.1f} s" if ray["local"] else ray["address"]
        typer.echo(f"fleet of {len(r['boards'])} boards on Ray ({where}): "
                   f"{r['measured']} measured, {r['skipped']} already in store, {len(r['failed'])} failed in "
                   f"{r['wall_s']:.0f} s ({r['subnets_per_min']:.1f} subnets/min); store {r['store']}")
        for g in r["devices"]:
            boards = ", ".join(f"{b} {r['boards'][b]['measured']}" for b in g["boards"])
            typer.echo(f"  {g['device']} ({g['runtime_config']}, isolated scale): {g['measured']} measured "
                       f"(by board: {boards})")
        for t in r["retries"]:
            typer.echo(f"  retried {t['arch_id']}: taken from {t['board']} ({t['reason']}); measured by "
                       f"{t['measured_by'] or 'nobody yet'}")
        for w in r.get("warnings") or []:
            typer.echo(f"warning: {w}", err=True)

    emit(res, json_, human)
    if res["unmeasured"]:
        raise typer.Exit(1)


predictor_app = typer.Typer(help="Fit and evaluate latency and accuracy predictors.", no_args_is_help=True)
app.add_typer(predictor_app, name="predictor")


@predictor_app.command("fit")
def predictor_fit_cmd(
    target: str = typer.Option("latency", help="latency | accuracy"),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="Device (latency)."),
    kind: Optional[str] = typer.Option(None, help="xgb (default latency) | lut | hybrid | transfer | linear | "
                                                  "mlp | auto (xgb is the default for accuracy too)"),
    supernet: str = typer.Option("mbv3_fmnist"),
    store: Path = typer.Option(Path("hwnas-out/store.sqlite")),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Artifact file (.json) or directory."),
    holdout: float = typer.Option(0.2, help="Held-out fraction for the reported metrics (0: none).",
                                  callback=number(0, 1, hi_open=True)),
    max_train: Optional[int] = typer.Option(None, help="Use at most N training rows (few-shot).", callback=COUNT),
    prior: Optional[Path] = typer.Option(None, help="Prior predictor of another device (kind transfer)."),
    rows: Optional[Path] = typer.Option(None, "--rows", metavar="FILE",
                                        help="Fit on (arch, accuracy) rows from a CSV or JSON file instead of "
                                             "the store."),
    weights: Optional[Path] = typer.Option(None, help="Accuracy: the supernet weights whose evaluations to fit "
                                                      "(default: the shipped weights)."),
    split: str = typer.Option("val", help="Accuracy: the stored split (default: val, or the one dataset these "
                                          "weights were evaluated on with --data)."),
    seed: int = typer.Option(0, callback=SEED),
    json_: bool = JSON_OPT,
) -> None:
    """Fit a predictor on the store's rows; report held-out RMSE, MAPE, +-5%/+-10%, Kendall tau."""
    import hwnas.jobs as jobs

    extra = {"weights": weights, "split": split} if target == "accuracy" and rows is None else {}
    res = jobs.fit_predictor(store, target=target, device=device, supernet=supernet, kind=kind, out=out,
                             holdout=holdout, seed=seed, max_train=max_train, prior=prior, rows=rows,
                             **extra).to_dict()

    def human(r):
        note = (r.get("rows_info") or {}).get("note")
        if note:
            typer.echo(f"{r['rows']}: {note}")
        typer.echo(_metrics_line(r))

    emit(res, json_, human)


def _metrics_line(r: dict) -> str:
    m = r.get("metrics") or {}
    head = f"{r['kind']} {r['target']} predictor: {r['n_train']} train / {r['n_test']} held out"
    if not m:
        return head + (f"; wrote {r['out']}" if r.get("out") else "")
    parts = [f"RMSE {m['rmse']:.4g}", f"Kendall tau {m['kendall_tau']:.3f}"]
    if "mape" in m:
        parts += [f"MAPE {m['mape']:.2f}%", f"within +-5% {100 * m['within_5']:.1f}%",
                  f"within +-10% {100 * m['within_10']:.1f}%"]
    return head + ": " + ", ".join(parts) + (f"; wrote {r['out']}" if r.get("out") else "")


@predictor_app.command("eval")
def predictor_eval_cmd(
    predictor: Path = typer.Argument(..., help="Predictor artifact."),
    store: Path = typer.Option(Path("hwnas-out/store.sqlite")),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="Score on this device's rows."),
    json_: bool = JSON_OPT,
) -> None:
    """Score a saved predictor on the store's rows it was not trained on."""
    from hwnas.predictors.jobs import eval_job

    res = eval_job(store, predictor, device)
    emit(res, json_, lambda r: typer.echo(json.dumps(r.get("metrics", r), indent=2, default=str)))


@predictor_app.command("predict")
def predictor_predict_cmd(
    predictor: Path = typer.Argument(..., help="Predictor artifact (.json), or Once-for-All's AccuracyPredictor "
                                               ".pth (with --supernet)."),
    arch: str = typer.Option(..., "--arch", help="Arch JSON file (or inline JSON)."),
    supernet: Optional[str] = typer.Option(None, help="Supernet family (needed for an OFA .pth; checked otherwise)."),
    json_: bool = JSON_OPT,
) -> None:
    """Predict the latency (ms) or accuracy of one arch with a saved predictor."""
    import hwnas.jobs as jobs

    res = jobs.predict(predictor, arch, supernet=supernet).to_dict()

    def human(r):
        v = r["values"][0]
        shown = f"{v:.4f} ms" if r["unit"] == "ms" else f"{100 * v:.2f}% top-1"
        where = f" on {r['device']}" if r.get("device") else ""
        typer.echo(f"{r['arch_ids'][0]}: predicted {r['target']} {shown}{where} ({r['supernet']})")

    emit(res, json_, human)


@app.command("search")
def search_cmd(
    latency: Optional[str] = typer.Option(None, "--latency", help="Latency budget, e.g. 5ms or 0.8ms "
                                                                  "(default: 35% into the measured range)."),
    device: str = typer.Option("ort-cpu-1t", "--device", "-d"),
    supernet: str = typer.Option("mbv3_fmnist"),
    weights: Optional[Path] = typer.Option(None),
    store: Path = typer.Option(Path("hwnas-out/store.sqlite"), help="Store with this device's measurements."),
    latency_predictor: Optional[Path] = typer.Option(None, "--latency-predictor",
                                                     help="Latency predictor artifact (default: xgb fitted on the "
                                                          "store's rows); corrected on the device's measurements."),
    accuracy_predictor: Optional[Path] = typer.Option(None, "--accuracy-predictor",
                                                      help="Accuracy predictor: an hwnas artifact or Once-for-All's "
                                                           "AccuracyPredictor .pth (default: the shipped one)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Your data (image folder, train/ and val/ folders, or "
                                        ".npz): BN recalibration and accuracy of the most promising archs; with no "
                                        "accuracy predictor, one is fitted on --accuracy-samples archs evaluated "
                                        "on it."),
    accuracy_samples: int = typer.Option(50, "--accuracy-samples", help="Archs evaluated on --data to fit an "
                                         "accuracy predictor when none is given (stored, resumable).",
                                         callback=number(0)),
    rounds: int = typer.Option(2, help="Closed-loop rounds (search, measure, refit).", callback=COUNT),
    seed: int = typer.Option(0, callback=SEED),
    out: Path = typer.Option(Path("hwnas-out/search"), "-o", "--out"),
    json_: bool = JSON_OPT,
) -> None:
    """NSGA-II search for the most accurate subnet within a latency budget, verified on the device."""
    import hwnas.jobs as jobs

    res = jobs.search(device, latency, supernet=supernet, store=store, out=out, rounds=rounds, seed=seed,
                      weights=weights, latency_predictor=latency_predictor, accuracy_predictor=accuracy_predictor,
                      data=data, accuracy_samples=accuracy_samples, predictors_dir=out / "predictors",
                      log=(lambda s: None) if json_ else (lambda s: typer.echo(s, err=True)))
    r = res.result
    emit({"best": r.best.to_dict(), "budget_ms": res.budget_ms, "files": res.files,
          "latency_predictor": res.latency_predictor, "accuracy_predictor": res.accuracy_predictor,
          "archs_predicted": res.n_predicted, "wall_s": r.wall_s, "evals_per_s": r.evals_per_s},
         json_, lambda d: typer.echo(f"best: {r.best.arch_id}, {_latency_note(r.best)} (budget {res.budget_ms:.3f} ms, "
                                     f"anchored timing on {res.device}); {res.n_predicted} archs predicted; "
                                     f"files in {out}"))


def _latency_note(best) -> str:
    if best.confirmed_ci_ms is None:
        return f"measured {best.measured_latency_ms:.3f} ms"
    lo, hi = best.confirmed_ci_ms
    return (f"{best.confirmed_latency_ms:.3f} ms confirmed in a fresh session (95% interval {lo:.3f}-{hi:.3f} ms; "
            f"the search measured {best.measured_latency_ms:.3f} ms)")


@app.command("run")
def run_cmd(
    out: Path = typer.Option(Path("hwnas-out"), "-o", "--out"),
    device: str = typer.Option("ort-cpu-1t", "--device", "-d"),
    supernet: str = typer.Option("mbv3_fmnist", help="Supernet family with shipped weights and accuracy predictor "
                                                      "(mbv3_fmnist, vit_fmnist)."),
    samples: int = typer.Option(150, help="Subnets to profile (reused on a second run).", callback=number(2)),
    latency: Optional[str] = typer.Option(None, "--latency", help="Budget (default: 35% into the measured range)."),
    rounds: int = typer.Option(2, callback=COUNT),
    seed: int = typer.Option(0, callback=SEED),
    json_: bool = JSON_OPT,
) -> None:
    """The main job: profile this machine, fit predictors, search, export ONNX and the engine chosen by measurement."""
    import hwnas.jobs as jobs

    say = (lambda s: None) if json_ else (lambda s: typer.echo(s, err=True))
    with progress_bar("profiling", samples, enabled=not json_) as update:
        res = jobs.run(out, device=device, supernet=supernet, samples=samples, latency=latency, rounds=rounds,
                       seed=seed, log=say,
                       progress=lambda ev: update(ev.done, ev.total)).to_dict()

    def human(s):
        b = s["best"]
        e = s["engine"]
        typer.echo("")
        typer.echo(f"budget        {s['budget_ms']:.3f} ms on {s['device']}")
        typer.echo(f"chosen        {b['arch_id']}")
        typer.echo(f"measured      {b['measured_latency_ms']:.3f} ms in the search (predicted {b['predicted_latency_ms']:.3f}; "
                   "anchored scale)")
        if b.get("confirmed_ci95_ms"):
            lo, hi = b["confirmed_ci95_ms"]
            typer.echo(f"confirmed     {b['confirmed_latency_ms']:.3f} ms, 95% interval {lo:.3f}-{hi:.3f} ms (fresh session, "
                       f"{'within' if b['confirmed_within_budget'] else 'NOT within'} budget at the upper end)")
        if b.get("shipped_onnx"):
            sh = b["shipped_onnx"]
            typer.echo(f"shipped file  {sh['median_ms']:.3f} ms, 95% interval {sh['ci95_ms'][0]:.3f}-{sh['ci95_ms'][1]:.3f} ms "
                       f"({sh['file']}, anchored scale)")
            if sh.get("at_current_speed_ms"):
                drift = sh["anchor_now_ms"] / sh["anchor_ms"] - 1
                typer.echo(f"              {sh['at_current_speed_ms']:.3f} ms at the anchor's speed just now (it ran "
                           f"{100 * abs(drift):.1f}% {'slower' if drift > 0 else 'faster'} than its calibration): the "
                           "figure to compare with a plain loop timed now")
        typer.echo(f"val top-1     {100 * b['val_top1']:.2f}% (predicted {100 * b['predicted_top1']:.2f}%)")
        typer.echo(f"engine        {e['winner']} ({e['reason']})")
        typer.echo("candidates    timed paired with ort-fp32, side by side; latency = the chosen subnet's anchored "
                   "latency / speed-up")
        engine_table(e["candidates"], scale_ms=b["measured_latency_ms"])
        if e.get("int8_line"):
            typer.echo(f"              {e['int8_line']}")
        typer.echo(f"latency model {s['latency_predictor']['within_10'] * 100:.0f}% of held-out subnets within +-10%, "
                   f"Kendall tau {s['latency_predictor']['kendall_tau']:.2f}")
        for k, v in s["files"].items():
            typer.echo(f"{k:<20}{v}")
        t = s["timings_s"]
        typer.echo(f"took          {t['total_s']:.0f} s (profile {t['profile_s']:.0f}, search {t['search_s']:.0f}, "
                   f"export {t['export_s']:.0f}); look at {s['files']['plot']}")

    emit(res, json_, human)
