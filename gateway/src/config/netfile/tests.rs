use super::*;

#[test]
fn reads_entries_comments_and_blank_lines() {
    let text = "# radiology\n10.1.0.0/16\n\n  10.2.3.4   # the PACS\n2001:db8::/32\n";
    let entries = parse(Path::new("r.txt"), text).unwrap();
    let nets: Vec<String> = entries.iter().map(|e| e.net.to_string()).collect();
    assert_eq!(nets, ["10.1.0.0/16", "10.2.3.4/32", "2001:db8::/32"]);
    assert_eq!(entries[1].line, 4);
}

#[test]
fn errors_name_file_line_and_column() {
    let errs = parse(
        Path::new("lists/r.txt"),
        "10.0.0.0/8\n   10.0.0.0/33\nnope\n",
    )
    .unwrap_err();
    let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        msgs,
        [
            "lists/r.txt:2:4: \"10.0.0.0/33\" is not a valid CIDR",
            "lists/r.txt:3:1: \"nope\" is not a valid IP address or CIDR",
        ]
    );
}

#[test]
fn host_bits_are_refused_with_a_suggestion() {
    let e = parse_net("10.0.0.1/8").unwrap_err();
    assert!(e.contains("did you mean \"10.0.0.0/8\""), "{e}");
}

#[test]
fn a_cut_short_or_empty_file_is_refused() {
    // "10.1.2.12" cut to "10.1.2.1" is still an address: another host.
    let err = parse(Path::new("r.txt"), "10.1.0.0/16\n10.1.2.1").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("r.txt:2:1: the last line has no newline"),
        "{err}"
    );
    let err = parse(Path::new("r.txt"), "").unwrap_err().to_string();
    assert!(err.contains("the file is empty"), "{err}");
    assert!(err.contains("# no entries"), "{err}");
    // Empty on purpose.
    assert_eq!(parse(Path::new("r.txt"), "# no entries\n").unwrap(), []);
}
