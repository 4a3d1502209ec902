use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::super::chain::{self, head_path, head_record, parse_sealed, tests::sealed_lines};
use super::*;

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn write(&self, name: &str, lines: &[Vec<u8>]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, lines.concat()).unwrap();
        path
    }
}

/// The first problem (`FILE:LINE: what`), with FILE reduced to its name.
fn broken(files: &[&Path]) -> String {
    let files: Vec<PathBuf> = files.iter().map(|p| p.to_path_buf()).collect();
    match check(&files).outcome {
        Outcome::Broken(what) => {
            let dir = files[0].parent().unwrap().display().to_string() + "/";
            what.replace(&dir, "")
        }
        other => panic!("expected a problem, got {other:?}"),
    }
}

fn intact(files: &[&Path]) -> Vec<String> {
    let files: Vec<PathBuf> = files.iter().map(|p| p.to_path_buf()).collect();
    let report = check(&files);
    assert_eq!(report.outcome, Outcome::Intact, "{:?}", report.summary);
    let dir = files[0].parent().unwrap().display().to_string() + "/";
    report.summary.iter().map(|s| s.replace(&dir, "")).collect()
}

fn hash_of(line: &[u8]) -> String {
    let s = parse_sealed(line.strip_suffix(b"\n").unwrap()).unwrap();
    String::from_utf8(s.hash.to_vec()).unwrap()
}

#[test]
fn an_intact_trail_passes_with_a_summary() {
    let f = Files::new();
    let lines = sealed_lines(5);
    let path = f.write("audit.jsonl", &lines);
    let summary = intact(&[&path]);
    assert_eq!(
        summary,
        [format!(
            "audit.jsonl: 5 lines, seq 1 to 5, last hash {}; starts a chain",
            hash_of(&lines[4])
        )]
    );
}

#[test]
fn an_edited_field_value_is_changed() {
    let f = Files::new();
    let mut lines = sealed_lines(5);
    let text = String::from_utf8(lines[2].clone()).unwrap();
    lines[2] = text.replace("\"conn_id\":3", "\"conn_id\":9").into_bytes();
    let path = f.write("a", &lines);
    assert_eq!(
        broken(&[&path]),
        "a:3: changed: the line's hash does not match its content (seq 3)"
    );
}

#[test]
fn a_deleted_line_is_removed() {
    let f = Files::new();
    let mut lines = sealed_lines(6);
    lines.remove(2);
    assert_eq!(
        broken(&[&f.write("a", &lines)]),
        "a:3: removed: seq jumps from 2 to 4: seq 3 is missing"
    );
    lines.remove(2);
    lines.remove(2);
    assert_eq!(
        broken(&[&f.write("a", &lines)]),
        "a:3: removed: seq jumps from 2 to 6: seq 3 to 5 are missing"
    );
}

#[test]
fn swapped_lines_are_reordered() {
    let f = Files::new();
    let mut lines = sealed_lines(6);
    lines.swap(2, 3);
    assert_eq!(
        broken(&[&f.write("a", &lines)]),
        "a:3: reordered: seq 4 comes before seq 3 (line 4)"
    );
    // A line moved up.
    let mut lines = sealed_lines(6);
    let moved = lines.remove(4);
    lines.insert(1, moved);
    assert_eq!(
        broken(&[&f.write("a", &lines)]),
        "a:2: reordered: seq 5 comes before seq 2 (line 3)"
    );
    // A line moved down: missing where it was, first.
    let mut lines = sealed_lines(6);
    let moved = lines.remove(1);
    lines.insert(4, moved);
    assert_eq!(
        broken(&[&f.write("a", &lines)]),
        "a:2: removed: seq jumps from 1 to 3: seq 2 is missing"
    );
}

#[test]
fn a_duplicated_line_is_reordered() {
    let f = Files::new();
    let mut lines = sealed_lines(5);
    lines.insert(3, lines[2].clone());
    assert_eq!(
        broken(&[&f.write("a", &lines)]),
        "a:4: reordered: seq 3 again (a duplicate of line 3)"
    );
}

#[test]
fn a_recomputed_line_does_not_follow_the_line_before_it() {
    let f = Files::new();
    let mut lines = sealed_lines(5);
    // Line 3 edited and resealed by someone who cannot reseal the rest.
    let mut edited = String::from_utf8(lines[2].clone()).unwrap();
    edited.truncate(edited.find(",\"seq\"").unwrap());
    let mut edited = (edited.replace("\"conn_id\":3", "\"conn_id\":9") + "}").into_bytes();
    let mut chain = super::super::chain::Chain::fresh_at(2, {
        let s = parse_sealed(lines[1].strip_suffix(b"\n").unwrap()).unwrap();
        s.hash
    });
    chain.seal(&mut edited);
    edited.push(b'\n');
    lines[2] = edited;
    assert_eq!(
        broken(&[&f.write("a", &lines)]),
        "a:4: does not follow the line before it (line 3, seq 3): prev is not that line's hash; \
         the chain was recomputed from here on, or a line was replaced"
    );
}

#[test]
fn lines_removed_at_the_end_show_against_the_head_file() {
    let f = Files::new();
    let lines = sealed_lines(10);
    let path = f.write("audit.jsonl", &lines[..8]);
    let last = parse_sealed(lines[9].strip_suffix(b"\n").unwrap()).unwrap();
    std::fs::write(head_path(&path), head_record(10, &last.hash)).unwrap();
    assert_eq!(
        broken(&[&path]),
        "audit.jsonl:8: removed at the end: audit.jsonl.head says the chain reached seq 10, \
         the last line has seq 8: seq 9 to 10 are missing"
    );
    // Whole, the trail agrees with its head.
    let path = f.write("audit.jsonl", &lines);
    assert_eq!(intact(&[&path])[1], "audit.jsonl.head: agrees (seq 10)");
    // The last line rewritten along with the head's seq: another hash.
    let other = parse_sealed(lines[8].strip_suffix(b"\n").unwrap()).unwrap();
    std::fs::write(head_path(&path), head_record(10, &other.hash)).unwrap();
    assert!(broken(&[&path])
        .starts_with("audit.jsonl:10: changed: audit.jsonl.head names another hash"));
    // Garbage in the head file.
    std::fs::write(head_path(&path), b"nonsense\n").unwrap();
    assert_eq!(
        broken(&[&path]),
        "audit.jsonl.head:1: changed: not a head file (expected `seq hash`)"
    );
}

#[test]
fn the_chain_goes_on_across_files() {
    let f = Files::new();
    let lines = sealed_lines(9);
    let old = f.write("audit.jsonl.1", &lines[..5]);
    let new = f.write("audit.jsonl", &lines[5..]);
    let summary = intact(&[&old, &new]);
    assert_eq!(
        summary[1],
        format!(
            "audit.jsonl: 4 lines, seq 6 to 9, last hash {}; continues seq 5 of the previous file",
            hash_of(&lines[8])
        )
    );
    assert!(intact(&[&new])[0].ends_with("starts after seq 5 (the earlier file was not given)"));
    // Given the wrong way round.
    assert_eq!(
        broken(&[&new, &old]),
        "audit.jsonl.1:1: does not continue the previous file audit.jsonl (which ends at seq 9): \
         it starts a new chain (seq 1)"
    );
    // A file missing in between.
    let middle_gone = f.write("audit.jsonl", &lines[7..]);
    assert_eq!(
        broken(&[&old, &middle_gone]),
        "audit.jsonl:1: does not continue the previous file audit.jsonl.1 (which ends at seq 5): \
         this file starts at seq 8: seq 6 to 7 are missing"
    );
}

#[test]
fn a_torn_last_line_is_reported_and_a_torn_line_moat_went_on_over_is_noted() {
    let f = Files::new();
    let lines = sealed_lines(5);
    let mut torn = lines[..4].to_vec();
    torn.push(lines[4][..50].to_vec());
    assert_eq!(
        broken(&[&f.write("a", &torn)]),
        "a:5: torn last line: an incomplete line (moat stopped mid-write, or the file was cut)"
    );
    // Only the final newline missing.
    let mut cut = lines.concat();
    cut.pop();
    std::fs::write(f.dir.path().join("a"), &cut).unwrap();
    assert!(broken(&[&f.dir.path().join("a")])
        .starts_with("a:5: torn last line: the file ends without a newline"));

    // moat restarted: a newline after the torn line, then on from line 4.
    let mut resumed = lines[..4].to_vec();
    resumed.push([&lines[4][..50], b"\n"].concat());
    resumed.push(lines[4].clone());
    let summary = intact(&[&f.write("a", &resumed)]);
    assert!(
        summary[0].ends_with(
            "; 1 torn line(s) (first at line 5: moat stopped mid-write, the chain goes on over it)"
        ),
        "{summary:?}"
    );
    // A line replaced by a torn-looking one: the next does not go on.
    let mut hidden = lines.clone();
    hidden[2] = [&lines[2][..50], b"\n"].concat();
    assert_eq!(
        broken(&[&f.write("a", &hidden)]),
        "a:3: torn or changed: not a complete line, and a:4 does not go on from the line before it"
    );
    // The first line made to look torn: only a new chain may follow.
    let mut first = lines.clone();
    first[0] = [&lines[0][..50], b"\n"].concat();
    assert_eq!(
        broken(&[&f.write("a", &first)]),
        "a:1: torn or changed: not a complete line, and a:2 does not go on from the line before it"
    );
}

#[test]
fn lines_without_chain_fields_or_not_json_are_named() {
    let f = Files::new();
    let mut lines = sealed_lines(3);
    lines.insert(
        0,
        b"{\"ts\":\"2026-01-01T00:00:00.000Z\",\"event\":\"gateway_started\"}\n".to_vec(),
    );
    assert_eq!(
        broken(&[&f.write("a", &lines)]),
        "a:1: no chain fields (seq, prev, hash): written before chaining, or not by moat"
    );
    let mut lines = sealed_lines(3);
    lines.insert(2, b"hello\n".to_vec());
    assert_eq!(broken(&[&f.write("a", &lines)]), "a:3: not JSON");
    let mut lines = sealed_lines(3);
    lines.insert(2, b"\n".to_vec());
    assert_eq!(broken(&[&f.write("a", &lines)]), "a:3: an empty line");
}

#[test]
fn a_hash_inside_a_field_value_does_not_fool_the_verifier() {
    let f = Files::new();
    let lines = sealed_lines(3);
    // A genuine line whose text holds the chain keys: serde escapes them.
    let mut chain = super::super::chain::Chain::fresh_at(3, {
        let s = parse_sealed(lines[2].strip_suffix(b"\n").unwrap()).unwrap();
        s.hash
    });
    let detail = format!(r#"","seq":9,"prev":"{0}","hash":"{0}"}}"#, "a".repeat(64));
    let mut genuine =
        serde_json::to_vec(&serde_json::json!({"ts": "t", "event": "x", "detail": detail}))
            .unwrap();
    chain.seal(&mut genuine);
    genuine.push(b'\n');
    let mut all = lines.clone();
    all.push(genuine);
    intact(&[&f.write("a", &all)]);

    // A forged line: the content changed, a hash of the changed start put
    // where a parser reading from the front would look first, and the
    // original chain members kept at the end.
    let original = String::from_utf8(lines[1].clone()).unwrap();
    let suffix_at = original.find(",\"seq\"").unwrap();
    let (body, members) = original.split_at(suffix_at);
    let forged_body = body.replace("\"conn_id\":2", "\"conn_id\":7");
    let s = parse_sealed(original.trim_end().as_bytes()).unwrap();
    let fake_covered = format!(
        "{forged_body},\"seq\":2,\"prev\":\"{}\"",
        std::str::from_utf8(&s.prev).unwrap()
    );
    let fake_hash = chain::hex_digest(fake_covered.as_bytes());
    let forged = format!(
        "{fake_covered},\"hash\":\"{}\",\"x\":\"{members}",
        std::str::from_utf8(&fake_hash).unwrap(),
    );
    let mut tampered = lines.clone();
    tampered[1] = forged.into_bytes();
    assert_eq!(
        broken(&[&f.write("a", &tampered)]),
        "a:2: changed: the line's hash does not match its content (seq 2)"
    );
}

#[test]
fn unreadable_files_are_their_own_outcome() {
    let f = Files::new();
    let missing = f.dir.path().join("nope");
    assert!(matches!(check(&[missing]).outcome, Outcome::Unreadable(_)));
    assert!(matches!(check(&[]).outcome, Outcome::Unreadable(_)));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    #[test]
    fn any_single_byte_change_is_detected(at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let f = Files::new();
        let mut bytes = sealed_lines(4).concat();
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        let path = f.dir.path().join("a");
        std::fs::write(&path, &bytes).unwrap();
        let outcome = check(&[path]).outcome;
        prop_assert!(matches!(outcome, Outcome::Broken(_)), "byte {} ^ {:#x}: {:?}", i, flip, outcome);
    }
}
