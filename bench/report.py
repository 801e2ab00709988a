"""Turns bench/run's JSON lines into the Markdown tables of BENCHMARKS.md."""
import json
import platform
import subprocess
import sys

everything = [json.loads(line) for line in open(sys.argv[1])]
rows = [r for r in everything if "rps" in r]
lists = [r for r in everything if "pages" in r]
by = {r["scenario"]: r for r in rows}


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def fmt(r):
    return (f"| {r['scenario']} | {r['rps']:,.0f} | {r['p50_us']:.0f} | {r['p90_us']:.0f} | "
            f"{r['p99_us']:.0f} | {r['p999_us']:.0f} | {r['errors']} | "
            f"{r['server_cpu']:.2f} | {r['client_cpu_seconds'] / r['seconds']:.2f} |")


print(f"Machine: {cpu_model()}, {subprocess.check_output(['nproc']).decode().strip()} cores; "
      f"server pinned to CPU 0, load generator to CPU 1.\n")
print("| scenario | req/s | p50 µs | p90 µs | p99 µs | p99.9 µs | errors | server CPU | client CPU |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print(fmt(r))

print("\n| ratio (same run) | value | target |")
print("|---|---:|---|")
def ratio(name, ours, bare, target):
    if ours in by and bare in by:
        print(f"| {name} | {by[ours]['rps'] / by[bare]['rps']:.2f} | {target} |")
ratio("gRPC Validate ours / bare", "ours grpc validate", "bare grpc validate", ">= 0.90")
ratio("HTTP status ours / bare", "ours http status", "bare http status", ">= 0.85")
ratio("Validate malformed / valid", "ours validate malformed", "ours grpc validate", ">= 1.00")
ratio("Validate unknown / valid", "ours validate unknown", "ours grpc validate", ">= 1.00")
ratio("Create, 32 clients / 1 client", "ours create, 32 clients", "ours create, 1 client", "many times")
half = by.get("ours grpc validate @ half")
if half:
    print(f"| p99 at half the bare maximum | {half['p99_us']:.0f} µs | < 1000 µs |")

curve = [r for r in rows if "tokens" in r]
if curve:
    print("\n| tokens | req/s | p99 µs | startup to SERVING ms | RSS MiB | data dir MiB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in curve:
        print(f"| {r['tokens']:,} | {r['rps']:,.0f} | {r['p99_us']:.0f} | {r['startup_ms']} | "
              f"{r['server_rss_mib']} | {r['data_dir_mib']} |")

if lists:
    print("\n| List through every token | tokens | pages | seconds | server RSS before / after MiB | server peak RSS MiB (whole life) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in lists:
        print(f"| {r['scenario']} | {r['tokens']:,} | {r['pages']:,} | {r['seconds']:.1f} | "
              f"{r['rss_before_mib']} / {r['rss_after_mib']} | {r['peak_rss_mib']} |")
