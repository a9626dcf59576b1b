# The loadgen scenario and standalone server that record.sh and compare.sh share: the FG_*
# settings and their defaults (documented in record.sh). Sourced, not run.
rate=${FG_RATE:-5000}
rooms=${FG_ROOMS:-100}
members=${FG_MEMBERS:-10}
senders=${FG_SENDERS:-$rooms}
body=${FG_BODY:-100}
warmup=${FG_WARMUP:-3}
duration=${FG_DURATION:-15}
threads=${FG_THREADS:-1}
port=${FG_PORT:-8097}
