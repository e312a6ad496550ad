"""The package behind scripts/cluster_failover_driver.py (the driver of
scripts/cluster-failover.sh), split by concept so that no file outgrows the
repository's size rule: common (clock, logging, tasks), cluster (Redis
Cluster and redis-server), procs (the script's processes), http (a small
keep-alive HTTP client), clients (WebSocket subscribers), publisher (load
and background probes), state (what a run holds), analysis (loss,
recovery and watch measurements), run (the set-up on top of both), phases
(the failure phases) and report (the Markdown report).
"""
