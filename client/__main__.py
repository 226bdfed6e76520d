"""`python -m client`: one province's daemon; every flag has an environment fallback."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path

from client.config import ClientConfig
from client.daemon import ClientDaemon
from client.he import HEError
from client.he_keys import read_share
from client.he_record import DecryptionRecord, RecordError
from client.links import TRANSPORTS
from client.local import LocalWork
from client.privacy import ClientPrivacy, PrivacyError
from client.receipts import ReceiptBook
from client.tasks import ClientError
from common.cli import env, env_flag
from common.data import DataError, load_province, synthesize_province
from common.data.synthetic import DEFAULT_ROWS, DEFAULT_SEED
from common.keysign import Identity
from common.logs import setup_logging
from common.members import load as load_members
from common.provinces import PROVINCES
from common.secagg import SecAggError
from common.settings import SettingsError
from common.tls import TLSSetupError, client_credentials

log = logging.getLogger("fedstock.client")

# Set by whoever wants a province's linear algebra on more threads (or fewer) than one.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def one_blas_thread() -> None:
    """Keep the province's linear algebra on one thread unless the environment says otherwise.

    OpenBLAS starts a thread per core in every process and spins them while it waits; a
    province is one of many processes sharing the cores (nine of them on one machine in
    `make demo`), where a 240,000 × 8 matrix-vector product cost 20 times the CPU on two
    threads that it costs on one (docs/performance.md). One thread also makes the sums of a
    product the same on every machine, whatever its number of cores."""
    if any(name in os.environ for name in BLAS_THREAD_VARIABLES):
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def build_parser() -> argparse.ArgumentParser:
    """Every flag of `python -m client`, its default read from its FEDSTOCK_* variable."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m client",
        description="Run one province's fedstock client: load its own rows, join the server, "
        "train and evaluate when asked, exit 0 when the server says stop. Each flag falls back "
        "to the environment variable named in brackets.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--province",
        default=env("PROVINCE", None),
        help="this client's province: one of the members of the federation (by default the "
        f"paper's nine: {', '.join(PROVINCES)}) [FEDSTOCK_PROVINCE]",
    )
    add(
        "--members",
        type=Path,
        default=env("MEMBERS", None),
        metavar="FILE",
        help="the federation's members, as the server's --members FILE (CSV: name, "
        "display_name, identity; or TOML [[member]] tables); the synthetic market deals its "
        "rows among them [FEDSTOCK_MEMBERS]",
    )
    add(
        "--server",
        default=env("SERVER", "localhost:50051"),
        help="the aggregation server's HOST:PORT [FEDSTOCK_SERVER]",
    )
    add(
        "--data",
        type=Path,
        default=env("DATA", None),
        help="folder holding <province>.parquet (see `python -m common.data --help`); without "
        "it the client synthesizes its province of the embedded default market [FEDSTOCK_DATA]",
    )
    add(
        "--rows",
        type=int,
        default=env("ROWS", str(DEFAULT_ROWS)),
        help="rows of the whole synthetic market, of which this province makes its share "
        "(ignored with --data) [FEDSTOCK_ROWS]",
    )
    add(
        "--seed",
        type=int,
        default=env("SEED", str(DEFAULT_SEED)),
        help="seed of the synthetic market (ignored with --data) [FEDSTOCK_SEED]",
    )
    add(
        "--connect-timeout",
        type=float,
        default=env("CONNECT_TIMEOUT", "300"),
        help="seconds to keep retrying while the server is unreachable [FEDSTOCK_CONNECT_TIMEOUT]",
    )
    add(
        "--transfer-timeout",
        type=float,
        default=env("TRANSFER_TIMEOUT", "600"),
        help="deadline in seconds for sending or receiving one set of parameters "
        "[FEDSTOCK_TRANSFER_TIMEOUT]",
    )
    add(
        "--max-model-mb",
        type=float,
        default=env("MAX_MODEL_MB", "4096"),
        help="largest global model accepted from the server, in MiB [FEDSTOCK_MAX_MODEL_MB]",
    )
    add(
        "--tls-dir",
        type=Path,
        default=env("TLS_DIR", "certs"),
        help="folder with ca.pem and this province's <province>.pem and <province>.key "
        "(see python -m server.certs) [FEDSTOCK_TLS_DIR]",
    )
    add(
        "--insecure",
        action="store_true",
        default=env_flag("INSECURE"),
        help="connect without TLS, to a server started with --insecure [FEDSTOCK_INSECURE=1]",
    )
    add(
        "--he-key",
        type=Path,
        default=env("HE_KEY", None),
        help="this province's share of the federation's Paillier key (<province>.key from "
        "`python -m client.he_keys`), given to it alone out of band, never to the server; "
        "needed when the server runs --privacy he [FEDSTOCK_HE_KEY]",
    )
    add(
        "--he-insecure-key-size",
        action="store_true",
        default=env_flag("HE_INSECURE_KEY_SIZE"),
        help="accept a Paillier key below 2048 bits, which can be factored: for tests only "
        "[FEDSTOCK_HE_INSECURE_KEY_SIZE=1]",
    )
    add(
        "--slowdown",
        type=float,
        metavar="FACTOR",
        default=env("SLOWDOWN", "1"),
        help="simulate a slower machine: after training, wait (FACTOR − 1) times the training "
        "time, so a round's training takes FACTOR times as long; for testing the asynchronous "
        "mode [FEDSTOCK_SLOWDOWN]",
    )
    add(
        "--receipts",
        type=Path,
        default=Path(env("RECEIPTS", "receipts")),
        metavar="DIR",
        help="folder for this province's receipts of the server's ledger (<province>.jsonl), "
        "to check the ledger against later with python -m server.ledger verify --receipts DIR, "
        "and under --privacy he its record of the sums it decrypted "
        "(<province>.he-decryptions); one folder per run [FEDSTOCK_RECEIPTS]",
    )
    add(
        "--transport",
        choices=TRANSPORTS,
        default=env("TRANSPORT", "stream"),
        help="stream: one Session stream for the whole session (contract version 2); unary: a "
        "GetTask and a Submit call per task, for servers older than the stream "
        "[FEDSTOCK_TRANSPORT]",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> ClientConfig:
    """The settings the flags ask for; one that cannot work ends the program with its reason."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.province is None:
        parser.error("--province is required (or set FEDSTOCK_PROVINCE)")
    try:
        members = load_members(args.members)
        province = members.check(args.province)
        given = {f.name: getattr(args, f.name) for f in fields(ClientConfig)}
        return ClientConfig(**{**given, "province": province, "members": members})
    except ValueError as error:  # ConfigError among them
        parser.error(str(error))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    setup_logging()
    one_blas_thread()
    try:
        if config.data is not None:
            raw = load_province(config.data, config.province, config.members)
        else:
            raw = synthesize_province(config.province, config.rows, config.seed, config.members)
    except DataError as error:
        log.error("cannot load %s's data: %s", config.province, error)
        return 2
    log.info("%s holds %d rows", config.province, len(raw))
    try:
        me = config.members.member(config.province)
        credentials = (
            None
            if config.insecure
            else client_credentials(config.tls_dir, config.province, me.identity)
        )
        identity = (
            None
            if config.insecure
            else Identity.load(config.tls_dir, config.province, config.members)
        )
        he_key = config.he_key
        share = read_share(he_key, config.province, config.he_insecure_key_size) if he_key else None
        # Beside the ledger's receipts: like them, it lasts the run and outlives a restart.
        decryptions = DecryptionRecord(config.receipts / f"{config.province}.he-decryptions")
        privacy = ClientPrivacy(share, identity, decryptions)
        receipts = ReceiptBook(config.receipts / f"{config.province}.jsonl")
    except (TLSSetupError, ValueError, OSError, RecordError) as error:
        log.error("%s", error)
        return 2
    if credentials is None:
        log.warning("connecting WITHOUT TLS (--insecure)")
    daemon = ClientDaemon(
        config.province,
        config.server,
        credentials,
        LocalWork(raw, privacy, config.slowdown),
        connect_timeout=config.connect_timeout,
        transfer_timeout=config.transfer_timeout,
        max_model_bytes=config.max_model_bytes,
        receipts=receipts,
        transport=config.transport,
    )
    # What is here by now (the imports, the province's rows) lives as long as the process: out
    # of the collector's sight, its full passes stop walking it again (docs/performance.md).
    # The garbage of loading goes first, so none of it is kept for good.
    gc.collect()
    gc.freeze()
    try:
        daemon.run()
    except (ClientError, PrivacyError, HEError, SecAggError, SettingsError) as error:
        log.error("%s", error)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
