use super::*;

#[test]
fn line_column_is_one_based_and_counts_characters() {
    let src = "a = 1\nbé = \"x\"\n";
    assert_eq!(line_column(src, 0), (1, 1));
    assert_eq!(line_column(src, 6), (2, 1));
    // "bé = " is 6 bytes but 5 characters.
    assert_eq!(line_column(src, 7 + 5), (2, 6));
}

#[test]
fn display_names_file_line_column_and_field() {
    let e = ConfigError::at(Path::new("moat.toml"), "x\n  y", 4..5, "bad").with_field("allow");
    assert_eq!(e.to_string(), "moat.toml:2:3: allow: bad");
}

#[test]
fn suggestion_only_for_near_misses() {
    assert_eq!(
        did_you_mean("listn", ["listen", "upstream"]),
        Some("listen")
    );
    assert_eq!(did_you_mean("zzz", ["listen", "upstream"]), None);
}
