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
