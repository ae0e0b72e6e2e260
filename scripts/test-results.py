#!/usr/bin/env python3
"""Tallies one test run of scripts/run-tests.sh from what the runners wrote, not from their summaries.

Reads RESULTS_DIR:
  NAME.junit.xml   ctest's JUnit report of one ctest call (--output-junit)
  NAME.gtest/      the GoogleTest XML reports of the same call (GTEST_OUTPUT=xml:NAME.gtest/), one per
                   test binary, named after it; canopy_test registers each binary as a ctest test of
                   the same name
  NAME.plain       lines "pass|fail|skip NAME [reason]" from tiers that are not ctest (fuzz, bench)

Counting: a GoogleTest binary counts its test cases (a GTEST_SKIP is a skip); any other ctest test
counts once (SKIP_RETURN_CODE is a skip). A ctest test that failed counts at least one failure even when
its GoogleTest report says every case passed (a sanitizer report at exit, a crash before the report).
Prints every failure and skip with its reason, then the closing line
  tests: N passed, N failed, N skipped
Exit status: 1 when anything failed, or with --no-skip when anything was skipped; else 0.
"""
import argparse
import os
import sys
import xml.etree.ElementTree as ET


class Tally:
    def __init__(self):
        self.passed = 0
        self.failed = []   # (name, reason)
        self.skipped = []  # (name, reason)

    def add(self, status, name, reason=""):
        if status == "pass":
            self.passed += 1
        elif status == "skip":
            self.skipped.append((name, reason))
        else:
            self.failed.append((name, reason))


def gtest_cases(path):
    """Yields (status, name, reason) for each test case of a GoogleTest XML report."""
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '?')}.{case.get('name', '?')}"
        failures = case.findall("failure") + case.findall("error")
        if failures:
            msg = (failures[0].get("message") or "").strip().splitlines()
            yield "fail", name, msg[0] if msg else "failed"
        elif case.get("result") == "skipped" or case.find("skipped") is not None:
            sk = case.find("skipped")
            msg = (sk.get("message") if sk is not None else "") or ""
            yield "skip", name, msg.strip().splitlines()[-1] if msg.strip() else "GTEST_SKIP"
        elif case.get("status") == "notrun" or case.get("result") == "suppressed":
            yield "skip", name, "disabled"
        else:
            yield "pass", name, ""


def tally_ctest(tally, junit, gtest_dir, prefix):
    try:
        root = ET.parse(junit).getroot()
    except (ET.ParseError, OSError) as e:
        tally.add("fail", prefix, f"unreadable ctest report {junit}: {e}")
        return
    for case in root.iter("testcase"):
        test = case.get("name", "?")
        label = f"{prefix}/{test}"
        status = case.get("status")
        failed = status == "fail" or case.find("failure") is not None
        skipped_el = case.find("skipped")
        if not failed and status == "notrun":
            msg = skipped_el.get("message", "") if skipped_el is not None else ""
            if msg.startswith("SKIP_"):
                out = (case.findtext("system-out") or "").strip().splitlines()
                tally.add("skip", label, out[-1] if out else msg)
            else:  # ctest counts "not run" (no executable, failed fixture) as failed
                tally.add("fail", label, msg or "not run")
            continue
        report = os.path.join(gtest_dir, test + ".xml")
        cases = []
        if os.path.isfile(report):
            try:
                cases = list(gtest_cases(report))
            except (ET.ParseError, OSError) as e:
                tally.add("fail", label, f"unreadable GoogleTest report: {e}")
                continue
        if not cases:
            tally.add("fail" if failed else "pass", label, "failed" if failed else "")
            continue
        for st, name, reason in cases:
            tally.add(st, f"{label}:{name}", reason)
        if failed and not any(st == "fail" for st, _, _ in cases):
            tally.add("fail", label, "the test program failed after its cases passed (see its output)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results_dir")
    ap.add_argument("--no-skip", action="store_true", help="a skip fails the run (CANOPY_NO_SKIP=1)")
    args = ap.parse_args()
    tally = Tally()
    entries = sorted(os.listdir(args.results_dir)) if os.path.isdir(args.results_dir) else []
    for entry in entries:
        path = os.path.join(args.results_dir, entry)
        if entry.endswith(".junit.xml"):
            stem = entry[: -len(".junit.xml")]
            tally_ctest(tally, path, os.path.join(args.results_dir, stem + ".gtest"), stem)
        elif entry.endswith(".plain"):
            stem = entry[: -len(".plain")]
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    parts = line.rstrip("\n").split(" ", 2)
                    if len(parts) < 2:
                        continue
                    st = parts[0] if parts[0] in ("pass", "fail", "skip") else "fail"
                    tally.add(st, f"{stem}/{parts[1]}", parts[2] if len(parts) > 2 else "")
    for name, reason in tally.failed:
        print(f"FAILED  {name}: {reason}")
    for name, reason in tally.skipped:
        verdict = "SKIP (a failure under CANOPY_NO_SKIP=1)" if args.no_skip else "SKIPPED"
        print(f"{verdict}  {name}: {reason}")
    print(f"tests: {tally.passed} passed, {len(tally.failed)} failed, {len(tally.skipped)} skipped")
    if tally.failed or (args.no_skip and tally.skipped):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
