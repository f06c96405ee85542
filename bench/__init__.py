"""Benchmarks of streamfit: `make bench` (`python -m bench`) runs them, writes docs/BENCHMARKS.md.

Each benchmark is a module with `NAME`, `TITLE`, `run(session, quick) -> dict`,
`summary(result) -> list[SummaryRow]` and `render(result) -> str`. They run against the real
service (`python -m service serve` as a child process) and the embedded broker, on loopback;
raw results go to bench/results/<name>.json (gitignored).
"""
