"""Command line: `streamfit serve | broker | produce | lag | fit | score | report | dev`."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from service.settings import Settings, SettingsError, load_settings


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


KAFKA_SETTINGS = (
    "kafka_bootstrap",
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "ssl_cafile",
)


def _add_setting_flags(
    parser: argparse.ArgumentParser,
    only: tuple[str, ...] | None = None,
    exclude: tuple[str, ...] = (),
) -> None:
    """One flag per setting, e.g. --batch-size for STREAMFIT_BATCH_SIZE."""
    group = parser.add_argument_group("settings (also STREAMFIT_<NAME> environment variables)")
    for name, field in Settings.model_fields.items():
        if (only is not None and name not in only) or name in exclude:
            continue
        default = field.default
        group.add_argument(
            _flag(name),
            dest=f"setting_{name}",
            default=None,
            metavar=name.upper(),
            help=f"default: {default!r}" if name not in ("api_key", "sasl_password") else "secret",
        )


def _settings_from(args: argparse.Namespace, **fixed: Any) -> Settings:
    overrides = {
        key.removeprefix("setting_"): value
        for key, value in vars(args).items()
        if key.startswith("setting_") and value is not None
    }
    overrides.update({k: v for k, v in fixed.items() if v is not None})
    return load_settings(**overrides)


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    return _settings_from(args).kafka_client_options()


def cmd_serve(args: argparse.Namespace) -> int:
    from service.model.startup import check_model

    settings = _settings_from(args)
    if settings.role == "scorer":
        return follow(settings)
    check_model(settings)
    return serve(settings)


def follow(settings: Settings, **job: Any) -> int:
    """Run a scorer (`ROLE=scorer`, `score --follow`) until SIGTERM; its model comes from the
    checkpoints, so the configured model is not checked."""
    from service.logs import configure_logging
    from service.scoring import crash_hook_from_env
    from service.scoring.follow import ScoreJob
    from service.scoring.process import serve_scorer

    configure_logging(settings.log_level, settings.log_format)
    return serve_scorer(settings, ScoreJob.of(settings, **job), crash_hook_from_env())


def serve(settings: Settings) -> int:
    """Run the HTTP service (and the trainer, by role) until SIGINT/SIGTERM.

    With HTTP workers (`STREAMFIT_HTTP_WORKERS`), this process binds the public port for them
    and serves its own app on a Unix socket they forward to (`service.serving.workers`).
    """
    import shutil

    from service.api import create_app
    from service.logs import configure_logging
    from service.serving.shared import private_directory
    from service.serving.workers import (
        HttpWorkers,
        listening_socket,
        worker_count,
        yield_to_workers,
    )

    configure_logging(settings.log_level, settings.log_format)
    # The learner thread runs Python between TensorFlow kernels; a shorter GIL switch
    # interval (default 5 ms) bounds how long the event loop waits for it.
    sys.setswitchinterval(0.001)
    workers: HttpWorkers | None = None
    count = worker_count(settings)
    if count:
        try:
            listener = listening_socket(settings.http_host, settings.http_port)
        except OSError as exc:
            print(
                f"streamfit: cannot listen on {settings.http_host}:{settings.http_port}: {exc}",
                file=sys.stderr,
            )
            return 2
        nice = yield_to_workers(settings, count)
        workers = HttpWorkers(settings, count, listener, private_directory(), nice)
    app = create_app(settings, workers=workers)
    where: dict[str, Any] = (
        {"uds": str(workers.control_socket)}
        if workers is not None
        else {"host": settings.http_host, "port": settings.http_port}
    )
    try:
        _run_server(app, **where)
    finally:
        if workers is not None:
            shutil.rmtree(workers.directory, ignore_errors=True)
    return 0


def cmd_http_worker(args: argparse.Namespace) -> int:
    """`streamfit http-worker` (started by `serve`, not by hand): one HTTP worker process."""
    import socket

    from service.api.worker import create_worker_app
    from service.logs import configure_logging
    from service.serving.workers import (
        CONTROL_SOCKET,
        parent_alive,
        request_short_slice,
        settings_from_trainer,
        watch_parent,
    )

    watch_parent(args.parent)
    request_short_slice()  # before uvicorn starts its threads: they inherit it
    settings = settings_from_trainer(sys.stdin.buffer.read())
    configure_logging(settings.log_level, settings.log_format)
    shared = Path(args.shared)
    app = create_worker_app(
        settings, shared, shared / CONTROL_SOCKET, alive=lambda: parent_alive(args.parent)
    )
    # Nothing reads the client's address: no proxy-header parsing on the hot path.
    _run_server(app, sockets=[socket.socket(fileno=args.fd)], proxy_headers=False)
    return 0


def _run_server(app: Any, sockets: list[Any] | None = None, **options: Any) -> None:
    """uvicorn with the service's options until SIGINT/SIGTERM (`options` adds where it
    listens, and others; `sockets` are listening sockets handed down)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        lifespan="on",
        **options,
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it shut down for, using the handler installed before it
    # ran: make that a no-op for SIGTERM, so a graceful stop (Kubernetes) exits 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run(sockets=sockets)


def cmd_broker(args: argparse.Namespace) -> int:
    from service.broker import EmbeddedBroker

    broker = EmbeddedBroker(port=args.port)
    broker.start(quiet=not args.verbose)
    print(f"embedded Kafka broker listening on {broker.bootstrap} (Ctrl-C stops it)", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return broker.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        broker.stop()


def cmd_produce(args: argparse.Namespace) -> int:
    from service.producer import FORMATS, CsvLayoutError, csv_pairs, produce, synthetic_pairs

    settings = _settings_from(args)
    total: int | None
    if args.from_csv:
        path = Path(args.from_csv)
        if not path.is_file():
            print(f"streamfit produce: no such file: {path}", file=sys.stderr)
            return 2
        message_format = args.format or settings.message_format
        if message_format not in FORMATS:
            print(
                f"streamfit produce: writes csv or json records, not {message_format}: "
                "pass --format",
                file=sys.stderr,
            )
            return 2
        try:
            pairs = csv_pairs(
                path, args.label_column, message_format, args.named, settings.label_field
            )
        except CsvLayoutError as exc:
            print(f"streamfit produce: {exc}", file=sys.stderr)
            return 2
        total = None
    else:
        if args.format == "json" or args.named:
            print("streamfit produce: --format and --named apply to --from-csv", file=sys.stderr)
            return 2
        total = None if args.forever else args.rows
        pairs = synthetic_pairs(total, args.seed, settings.num_features)
    sent = asyncio.run(
        produce(
            settings.kafka_client_options(),
            args.topic or settings.train_topic,
            pairs,
            partitions=args.partitions,
            rate=args.rate,
            total=total,
            progress=not args.quiet,
        )
    )
    print(f"produced {sent} records to {args.topic or settings.train_topic}", file=sys.stderr)
    return 0


def cmd_lag(args: argparse.Namespace) -> int:
    from service.kafka.lag import format_table, group_lag

    settings = _settings_from(args)
    default = (
        settings.score_topic
        if settings.score_topic and args.group == settings.score_group_id
        else settings.train_topic
    )
    rows = asyncio.run(
        group_lag(settings.kafka_client_options(), args.group, args.topic or default)
    )
    print(format_table(args.group, rows))
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    """`make run`: embedded broker + seeded topic + continuing stream + service, one Ctrl-C."""
    from service.broker import EmbeddedBroker

    broker = EmbeddedBroker(port=args.broker_port)
    bootstrap = broker.bootstrap
    # Before anything starts, so a bad or unknown setting stops `make run` with its one line.
    settings = _settings_from(
        args, kafka_bootstrap=bootstrap, train_topic=args.topic, log_format="text"
    )
    broker.start()
    print(f"broker on {bootstrap}; seeding {args.seed_rows} records into {args.topic}", flush=True)
    # The producers read the same environment: pass on what `--unknown-settings` decided.
    env = {
        **os.environ,
        "STREAMFIT_KAFKA_BOOTSTRAP": bootstrap,
        "STREAMFIT_UNKNOWN_SETTINGS": settings.unknown_settings,
    }
    base = [sys.executable, "-m", "service", "produce", "--topic", args.topic, "--partitions", "3"]
    stream: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [*base, "--synthetic", "--rows", str(args.seed_rows), "--seed", "1"],
            env=env,
            check=True,
        )
        stream = subprocess.Popen(
            [*base, "--synthetic", "--forever", "--seed", "2", "--rate", str(args.rate), "--quiet"],
            env=env,
            start_new_session=True,  # stopped by us after the service, not by Ctrl-C
        )
        print(
            f"serving on http://{settings.http_host}:{settings.http_port} (Ctrl-C stops all)",
            flush=True,
        )
        return serve(settings)
    finally:
        if stream is not None:
            stream.terminate()
            stream.wait()
        broker.stop()


def cmd_report(args: argparse.Namespace) -> int:
    from service.report import ReportError, report_from_checkpoints

    directory = args.checkpoint_dir or str(load_settings().checkpoint_dir)
    try:
        path = report_from_checkpoints(directory, args.output)
    except ReportError as exc:
        print(f"streamfit report: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamfit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the service")
    _add_setting_flags(serve_parser)
    serve_parser.set_defaults(func=cmd_serve)

    broker_parser = commands.add_parser("broker", help="run the embedded Kafka broker")
    broker_parser.add_argument("--port", type=int, default=9092)
    broker_parser.add_argument("--verbose", action="store_true", help="show the broker's log")
    broker_parser.set_defaults(func=cmd_broker)

    produce_parser = commands.add_parser("produce", help="write records to a topic")
    produce_parser.add_argument("--topic", help="default: STREAMFIT_TRAIN_TOPIC")
    produce_parser.add_argument("--partitions", type=int, default=1)
    source = produce_parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic", action="store_true", help="SUSY-shaped synthetic data")
    source.add_argument("--from-csv", metavar="PATH", help="CSV or CSV.gz, e.g. SUSY.csv.gz")
    produce_parser.add_argument("--rows", type=int, default=100_000)
    produce_parser.add_argument("--forever", action="store_true", help="synthetic: never stop")
    produce_parser.add_argument("--seed", type=int, default=0)
    produce_parser.add_argument(
        "--label-column",
        default="0",
        help="--from-csv: the label's column, an index (-1: last) or a header's column name",
    )
    produce_parser.add_argument(
        "--format",
        choices=("csv", "json"),
        default=None,
        help="--from-csv: the records' format (default: STREAMFIT_MESSAGE_FORMAT, csv)",
    )
    produce_parser.add_argument(
        "--named",
        action="store_true",
        help="json: flat objects keyed by the CSV header's column names and LABEL_FIELD",
    )
    produce_parser.add_argument("--rate", type=float, default=0.0, help="records/s, 0 = max")
    produce_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_setting_flags(
        produce_parser, only=(*KAFKA_SETTINGS, "num_features", "train_topic", "label_field")
    )
    produce_parser.set_defaults(func=cmd_produce)

    lag_parser = commands.add_parser("lag", help="consumer-group lag per partition")
    lag_parser.add_argument("--group", required=True)
    lag_parser.add_argument(
        "--topic",
        help="default: STREAMFIT_SCORE_TOPIC for the scorer group (SCORE_GROUP_ID), "
        "else STREAMFIT_TRAIN_TOPIC",
    )
    _add_setting_flags(
        lag_parser, only=(*KAFKA_SETTINGS, "train_topic", "score_topic", "score_group_id")
    )
    lag_parser.set_defaults(func=cmd_lag)

    worker_parser = commands.add_parser("http-worker")  # started by serve; not listed
    worker_parser.add_argument("--fd", type=int, required=True)
    worker_parser.add_argument("--shared", required=True)
    worker_parser.add_argument("--parent", type=int, required=True)
    worker_parser.set_defaults(func=cmd_http_worker)

    dev_parser = commands.add_parser("dev", help="broker + stream + service (what `make run` runs)")
    dev_parser.add_argument("--broker-port", type=int, default=9092)
    dev_parser.add_argument("--topic", default="susy-train")
    dev_parser.add_argument("--seed-rows", type=int, default=20_000)
    dev_parser.add_argument("--rate", type=float, default=500.0)
    _add_setting_flags(dev_parser, exclude=("kafka_bootstrap", "train_topic"))
    dev_parser.set_defaults(func=cmd_dev)
    report_parser = commands.add_parser("report", help="PNG learning curve from checkpoints")
    report_parser.add_argument("--checkpoint-dir", default=None, help="default: CHECKPOINT_DIR")
    report_parser.add_argument("--output", default="learning-curve.png")
    report_parser.set_defaults(func=cmd_report)

    add_batch_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"streamfit: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


BATCH_SETTINGS = (
    *KAFKA_SETTINGS,
    "num_features",
    "message_format",
    "schema_registry_url",
    "features",
    "label_field",
    "task",
    "classes",
    "num_classes",
    "max_record_bytes",
    "checkpoint_dir",
    "checkpoint_keep",
    "log_level",
    "log_format",
)


def cmd_fit(args: argparse.Namespace) -> int:
    """`streamfit fit`: replay a topic for epochs into the model, checkpoint at its end."""
    from service.logs import configure_logging
    from service.training.fitting import FitError, fit, format_fit_report

    settings = _settings_from(args, batch_size=args.batch_size)
    configure_logging(settings.log_level, settings.log_format)
    topic = args.topic or settings.train_topic
    try:
        report = fit(settings, topic, args.epochs, fresh=args.fresh, progress=not args.quiet)
    except FitError as exc:
        print(f"streamfit fit: {exc}", file=sys.stderr)
        return 1
    print(format_fit_report(report), flush=True)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """`streamfit score`: exactly-once batch inference for a consumer group; with `--follow`,
    continuous scoring until SIGTERM."""
    from service.logs import configure_logging
    from service.scoring import ScoringError, crash_hook_from_env, format_score_report, score

    settings = _settings_from(args)
    if args.follow:
        return follow(
            settings,
            topic=args.topic,
            group_id=args.group,
            output_topic=args.output_topic,
            transactions=args.transactions,
            batch_size=args.batch_size,
        )
    configure_logging(settings.log_level, settings.log_format)
    try:
        report = score(
            settings,
            args.topic,
            args.group,
            args.output_topic,
            args.transactions or "auto",
            args.batch_size,
            progress=not args.quiet,
            after_write=crash_hook_from_env(),
        )
    except ScoringError as exc:
        print(f"streamfit score: {exc}", file=sys.stderr)
        return 1
    print(format_score_report(report), flush=True)
    return 0


def add_batch_commands(commands: Any) -> None:
    """The tutorial's batch flows: `fit` (train from a topic) and `score` (batch inference)."""
    fit_parser = commands.add_parser(
        "fit", help="train on a whole topic for epochs; checkpoint where `serve` continues"
    )
    fit_parser.add_argument("--topic", help="default: STREAMFIT_TRAIN_TOPIC")
    fit_parser.add_argument("--epochs", type=int, default=1)
    fit_parser.add_argument("--batch-size", type=int, help="default: STREAMFIT_BATCH_SIZE")
    fit_parser.add_argument(
        "--fresh", action="store_true", help="start a new model even if a checkpoint exists"
    )
    fit_parser.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_setting_flags(
        fit_parser,
        only=(
            *BATCH_SETTINGS,
            "train_topic",
            "model",
            "model_arch",
            "standardize",
            "learning_rate",
            "seed",
            "export_dir",
            "export_keep",
            "model_name",
        ),
    )
    fit_parser.set_defaults(func=cmd_fit)

    score_parser = commands.add_parser(
        "score", help="exactly-once batch inference of a topic for a consumer group"
    )
    score_parser.add_argument("--topic", required=True)
    score_parser.add_argument("--group", required=True, help="consumer group holding progress")
    score_parser.add_argument("--output-topic", help="default: <topic>.predictions")
    score_parser.add_argument(
        "--transactions",
        choices=("auto", "on", "off"),
        default=None,
        help="Kafka transactions: auto (default) tries them and falls back to write-then-commit",
    )
    score_parser.add_argument(
        "--follow",
        action="store_true",
        help="keep scoring new records until SIGTERM, in the group with other scorers "
        "(health and metrics on SCORE_HTTP_PORT)",
    )
    score_parser.add_argument("--batch-size", type=int, help="default: STREAMFIT_BATCH_SIZE")
    score_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_setting_flags(
        score_parser,
        only=(
            *BATCH_SETTINGS,
            "dlq_topic",
            "http_host",
            "score_http_port",
            "session_timeout_ms",
            "group_instance_id",
            "predictor_reload_s",
        ),
    )
    score_parser.set_defaults(func=cmd_score)
