use super::*;

fn parse_str(s: &str) -> Result<LoadedConfig, ConfigErrors> {
    parse(Path::new("moat.toml"), s.to_string())
}

#[test]
fn unknown_key_is_an_error_with_a_suggestion() {
    let src = r#"
[[device]]
id = "ct"
name = "CT"
[[device.service]]
name = "dicom"
protocol = "tcp"
listn = "127.0.0.1:1"
"#;
    let err = parse_str(src).unwrap_err().to_string();
    assert!(
        err.starts_with("moat.toml:8:1: unknown field `listn`"),
        "{err}"
    );
    assert!(err.ends_with("did you mean `listen`?"), "{err}");
}

#[test]
fn bad_duration_points_at_the_value() {
    let src = "[gateway]\nshutdown_grace = \"soon\"\n";
    let err = parse_str(src).unwrap_err().to_string();
    assert!(
        err.starts_with("moat.toml:2:18: \"soon\" is not a duration"),
        "{err}"
    );
}

#[test]
fn syntax_error_has_a_location() {
    let err = parse_str("[gateway\n").unwrap_err().to_string();
    assert!(err.starts_with("moat.toml:1:"), "{err}");
}

#[test]
fn an_empty_file_is_refused() {
    let err = parse_str("").unwrap_err().to_string();
    assert_eq!(
        err,
        "moat.toml: the file is empty (truncated, or still being written?)"
    );
}

#[test]
fn a_file_cut_inside_a_line_is_refused_at_that_line() {
    // "max_connections = 256" cut to "= 25" is valid TOML, and so is a
    // file that stops before its `deny` list: only the missing newline
    // tells them from a whole file.
    let whole = "[gateway]\nshutdown_grace = \"30s\"\n";
    for cut in 1..whole.len() {
        let text = &whole[..cut];
        let result = parse_str(text);
        if text.ends_with('\n') {
            assert!(result.is_ok(), "{text:?}: {result:?}");
            continue;
        }
        let err = result.unwrap_err().to_string();
        let line = text.matches('\n').count() + 1;
        assert!(
            err.starts_with(&format!("moat.toml:{line}:1: the last line has no newline")),
            "{text:?}: {err}"
        );
    }
}
