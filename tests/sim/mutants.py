#!/usr/bin/env python3
"""Reintroduces, one at a time, bugs the simulator must catch (docs/development/testing.md,
"Simulator", "Bugs it catches"). Never commit a tree with a mutant applied.

    tests/sim/mutants.py --list
    tests/sim/mutants.py NAME && cargo test --release --test sim; git checkout -- src/

Each mutant is an exact text replacement in src/; one that no longer applies (the code moved)
fails loudly: update it with the code it breaks.
"""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]

MUTANTS = {
    # Members::live counts every record, stale ones too.
    "stale-ballots": [(
        "src/group/live.rs",
        "for seen in self.seen.values().filter(|s| now < s.live_until()) {",
        "for seen in self.seen.values().filter(|_| true) {",
    )],
    # Engine::next_wakeup may return an instant in the past: the loop spins without sleeping.
    "past-wakeup": [(
        "src/daemon/engine.rs",
        ".filter(|t| *t > now)",
        ".filter(|_| true)",
    )],
    # Neither the quorum nor the drains spare the last ready endpoint.
    "last-ready": [
        ("src/probe/quorum.rs",
         "if !addresses.is_empty() && evicted.len() == addresses.len() {",
         "if false {"),
        ("src/desired/nodes.rs",
         "        let keeper = if stays {\n            None",
         "        let keeper = if true {\n            None"),
    ],
    # A retired pair's slices go although live members still configure it.
    "wanted-delete": [(
        "src/group/live.rs",
        "        if !live.is_empty() {\n            Wanted::Live(live.into_iter().collect())",
        "        if live.is_empty() && stale.is_empty() || true {\n            Wanted::Nobody\n"
        "        } else if !live.is_empty() {\n            Wanted::Live(live.into_iter().collect())",
    )],
    # A timed drain judged by its drain-expires instant (the writer's clock), not its duration.
    "drain-by-wall-clock": [(
        "src/nodes/mod.rs",
        "if let Some(text) = self.drain_duration.as_deref() {",
        "if let Some(text) = self.drain_duration.as_deref().filter(|_| self.drain_expires.is_none()) {",
    )],
    # An expired remote source loses every endpoint: no keeper for it.
    "remote-expired-blanks": [(
        "src/desired/nodes.rs",
        "        let keeper = if stays {\n            None",
        "        let keeper = if stays || going.iter().all(|((_, expired), _, _)| *expired) {\n            None",
    )],
}


def main() -> int:
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 64
    if sys.argv[1] == "--list":
        print("\n".join(MUTANTS))
        return 0
    name = sys.argv[1]
    if name not in MUTANTS:
        print(f"mutants: no mutant '{name}' (there are: {', '.join(MUTANTS)})", file=sys.stderr)
        return 64
    for path, before, after in MUTANTS[name]:
        file = ROOT / path
        text = file.read_text()
        if text.count(before) != 1:
            print(f"mutants: {name}: {path} no longer holds the code it breaks; update the mutant",
                  file=sys.stderr)
            return 1
        file.write_text(text.replace(before, after, 1))
    print(f"mutants: {name} applied; `git checkout -- src/` undoes it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
