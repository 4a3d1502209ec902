//! Time-boxed TCP access grants after MFA (issue 12), end to end: the real
//! `moat` binary on a test clock; a person signing in on moat's portal
//! with curl from a chosen loopback address and `oathtool` codes, then
//! opening a grant to a TCP service; TCP clients (plain sockets, `openssl
//! s_client`, dcmtk's `storescu`) reaching the device through it, or not;
//! ops ending grants with `moat grants` and the admin API; break-glass
//! codes from `moat breakglass issue`.
//!
//! Each test checks what the clients got, what the device received, and
//! what the audit trail says.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::dicom::{make_dataset, run_tool, start_storescp};
use support::grants::*;
use support::mfa::{
    assert_no_secrets, auth_table, mfa_service, wait_reloads, write_atomically, write_users,
    Account, Agent, Device, TestClock, T0,
};
use support::{echo_upstream, require, wait_for, Echo, Moat, Workspace};

fn tools() {
    require("curl");
    require("oathtool");
    require("openssl");
}

/// Who the grant services admit.
const BIOMED: &str = "groups = [\"biomed\"]";

/// The issue's bound for cutting a live connection once its grant ends.
const CUT_WITHIN: Duration = Duration::from_secs(1);

/// The CT scanner: its DICOM port ("dicom", an echo device here) opened
/// by grants of up to 30 minutes to the biomed group.
fn ct_device(echo: SocketAddr, settings: &str) -> String {
    device(
        "ct",
        "CT",
        "Radiology 2",
        Some("2027-06-30"),
        &grant_service(
            "dicom",
            echo,
            &format!("{BIOMED}\nmax_grant = \"30m\"\n{settings}"),
            None,
        ),
    )
}

/// The common start: the CT behind moat with a portal, alice and bob in
/// biomed, the test clock at `T0`.
struct Ct {
    ws: Workspace,
    clock: TestClock,
    echo: Echo,
    alice: Account,
    bob: Account,
    moat: Moat,
}

fn ct(on_grant_end: &str) -> Ct {
    let settings = format!("on_grant_end = {on_grant_end:?}");
    ct_with(&[], |ws, echo| ct_config(ws, echo, &settings))
}

/// The CT service (with `settings`) and a portal, in front of `echo`.
fn ct_config(ws: &Workspace, echo: SocketAddr, settings: &str) -> String {
    let devices = ct_device(echo, settings) + &portal_device(ws, false);
    grants_config(&auth_table(""), &devices)
}

/// [`ct`] with more users beside alice and bob, and the config that
/// `config` writes for the workspace and the device's address.
fn ct_with(others: &[&Account], config: impl FnOnce(&Workspace, SocketAddr) -> String) -> Ct {
    tools();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let echo = echo_upstream();
    let alice = Account::new("alice", &["biomed"]);
    let bob = Account::new("bob", &["biomed"]);
    let mut users = vec![&alice, &bob];
    users.extend_from_slice(others);
    write_users(&ws, &users);
    let text = config(&ws, echo.addr);
    let moat = start_grants(&ws, &clock, &text, &["dicom", "portal"]);
    Ct {
        ws,
        clock,
        echo,
        alice,
        bob,
        moat,
    }
}

impl Ct {
    fn dicom(&self) -> SocketAddr {
        self.moat.addr("dicom")
    }

    /// `who` signs in on the portal from `source` and opens a grant to
    /// the CT for `minutes`, bound to that address: its `grant_opened`.
    fn grant(&self, who: &Account, source: &str, minutes: u64) -> Value {
        let person = PortalUser::sign_in(
            &self.ws,
            self.moat.addr("portal"),
            who,
            source,
            self.clock.now(),
        );
        person.open_grant(&self.moat, "ct/dicom", minutes, "address")
    }

    /// A live connection from `source` that reaches the device.
    fn live(&self, source: &str) -> Line {
        let mut line = line_from(source, self.dicom());
        line.assert_echoes(&format!("hello from {source}\n"));
        self.moat.wait_for_client("connection_allowed", line.local);
        line
    }
}

fn id_of(event: &Value) -> String {
    let id = event["grant_id"].as_str().unwrap_or_default().to_string();
    assert!(is_grant_id(&id), "grant id {id:?}: {event}");
    id
}

/// The `grant_ended` event of grant `id`.
fn ended(moat: &Moat, id: &str) -> Value {
    moat.wait_event("grant_ended", |e| e["grant_id"] == id)
}

/// The live connection was cut because its grant ended.
fn assert_cut(moat: &Moat, line: &mut Line) {
    let revoked = moat.wait_for_client("connection_revoked", line.local);
    assert_eq!(revoked["reason"], "grant_ended", "{revoked}");
    line.wait_eof();
}

/// What `DELETE /grants/ID` answered: the grant (under `ended`, as the
/// implementation wraps it, or bare).
fn deleted_grant(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    match v.get("ended") {
        Some(g) => g.clone(),
        None => v,
    }
}

// ---------------------------------------------------------------------------

#[test]
fn an_address_grant_opened_on_the_portal_admits_that_address_only() {
    tools();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let ct_echo = echo_upstream();
    let other_echo = echo_upstream();
    let alice = Account::new("alice", &["biomed"]);
    write_users(&ws, &[&alice]);
    let devices = [
        ct_device(ct_echo.addr, ""),
        device(
            "mri",
            "MRI",
            "Radiology 5",
            Some("2034-01-01"),
            &grant_service("mri-dicom", other_echo.addr, BIOMED, None),
        ),
        device(
            "pump",
            "Infusion pump",
            "Ward 9",
            Some("2040-01-01"),
            &grant_service("pump-ctl", other_echo.addr, "users = [\"alice\"]", None),
        ),
        device(
            "lab",
            "Lab analyser",
            "Basement",
            Some("2040-01-01"),
            &grant_service("lab-hl7", other_echo.addr, "groups = [\"lab\"]", None),
        ),
        portal_device(&ws, false),
    ]
    .concat();
    let text = grants_config(&auth_table(""), &devices);
    let moat = start_grants(
        &ws,
        &clock,
        &text,
        &["dicom", "mri-dicom", "pump-ctl", "lab-hl7", "portal"],
    );
    let dicom = moat.addr("dicom");

    // Before any grant, nobody gets through, not even from 127.0.0.1.
    assert_no_grant(&moat, "127.0.0.2", dicom);
    assert_no_grant(&moat, "127.0.0.1", dicom);

    // alice signs in from 127.0.0.2 with curl and an oathtool code. Her
    // page lists what she may reach: where each device is and how its
    // support stands, a grant form per TCP service, her address.
    let alice_at_2 = PortalUser::sign_in(&ws, moat.addr("portal"), &alice, "127.0.0.2", T0);
    let home = alice_at_2.home();
    let page = &home.body;
    for shown in [
        "CT",
        "Radiology 2",
        "past end of support",
        "MRI",
        "Radiology 5",
        "ending soon",
        "Infusion pump",
        "Ward 9",
        "supported",
        "127.0.0.2",
        "NAT",
    ] {
        assert!(
            page.contains(shown),
            "the home page lacks {shown:?}: {page}"
        );
    }
    assert!(
        !page.contains("Lab analyser"),
        "a device alice may not reach is listed: {page}"
    );
    let mut services = input_values(page, "service");
    services.sort();
    assert_eq!(
        services,
        ["ct/dicom", "mri/mri-dicom", "pump/pump-ctl"],
        "{page}"
    );
    let binds = input_values(page, "bind");
    assert!(
        !binds.is_empty() && binds.iter().all(|b| b == "address"),
        "no certificate on this connection, so only the address is offered: {binds:?}"
    );
    assert!(
        input_values(page, "minutes").len() == 3,
        "a minutes field per form: {page}"
    );
    alice_at_2.csrf(); // one token, the same in every form

    // The portal proxies nothing: any other path leads to its pages.
    let elsewhere = alice_at_2.agent.get("/pacs/studies?id=1");
    assert!(
        (300..400).contains(&elsewhere.status)
            && elsewhere
                .header("location")
                .is_some_and(|l| l.starts_with("/.moat/")),
        "{elsewhere:?}"
    );

    // She opens the CT for 10 minutes, for her address.
    let opened = alice_at_2.open_grant(&moat, "ct/dicom", 10, "address");
    let id = id_of(&opened);
    assert_eq!(opened["user"], "alice", "{opened}");
    // (The event's `device`/`service` are the portal's, where the
    // request came; the grant's own are `granted_*`.)
    assert_eq!(opened["granted_device"], "ct", "{opened}");
    assert_eq!(opened["granted_service"], "dicom", "{opened}");
    assert_eq!(
        opened["binding"],
        json!({"address": "127.0.0.2"}),
        "{opened}"
    );
    assert_eq!(opened["until"], T0 + 600, "{opened}");
    assert_eq!(opened["break_glass"], false, "{opened}");

    // The admin API lists it, and her page does, with a form to end it.
    let grants = admin_grants(&moat);
    assert_eq!(grants.len(), 1, "{grants:#?}");
    let g = &grants[0];
    assert_eq!(g["id"], id.as_str(), "{g}");
    assert_eq!(g["user"], "alice", "{g}");
    assert_eq!(g["device"], "ct", "{g}");
    assert_eq!(g["service"], "dicom", "{g}");
    assert_eq!(g["binding"], json!({"address": "127.0.0.2"}), "{g}");
    assert_eq!(g["opened_at"], T0, "{g}");
    assert_eq!(g["until"], T0 + 600, "{g}");
    assert_eq!(g["break_glass"], false, "{g}");
    assert!(
        g["target"]
            .as_str()
            .is_some_and(|t| t.contains(&ct_echo.addr.to_string())),
        "{g}"
    );
    assert_eq!(
        input_values(&alice_at_2.home().body, "id"),
        std::slice::from_ref(&id)
    );

    // 127.0.0.2 now reaches the CT...
    let mut line = line_from("127.0.0.2", dicom);
    line.assert_echoes("A-ASSOCIATE-RQ\n");
    line.assert_echoes("C-ECHO-RQ\n");
    let allowed = moat.wait_for_client("connection_allowed", line.local);
    assert_eq!(allowed["service"], "dicom", "{allowed}");
    // ...but 127.0.0.3 does not, nor 127.0.0.2 another grant service.
    let denied = assert_no_grant(&moat, "127.0.0.3", dicom);
    assert_eq!(denied["service"], "dicom", "{denied}");
    assert_no_grant(&moat, "127.0.0.2", moat.addr("mri-dicom"));
    assert_eq!(ct_echo.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(other_echo.accepted.load(Ordering::SeqCst), 0);
}

#[test]
fn the_moat_pages_of_an_mfa_web_service_open_grants_too() {
    tools();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let echo = echo_upstream();
    let web_ui = Device::start();
    let alice = Account::new("alice", &["biomed"]);
    write_users(&ws, &[&alice]);
    // No portal service: the CT's web UI behind `access = "mfa"` is where
    // alice signs in, and its /.moat/ pages offer the DICOM grant.
    let services = grant_service("dicom", echo.addr, BIOMED, None)
        + &mfa_service(&ws, "web", web_ui.addr, BIOMED, "");
    let devices = device("ct", "CT", "Radiology 2", Some("2027-06-30"), &services);
    let text = grants_config(&auth_table(""), &devices);
    let moat = start_grants(&ws, &clock, &text, &["dicom", "web"]);
    assert_no_grant(&moat, "127.0.0.2", moat.addr("dicom"));

    let person = PortalUser::sign_in(&ws, moat.addr("web"), &alice, "127.0.0.2", T0);
    let page = person.home().body;
    assert!(page.contains("Radiology 2"), "{page}");
    assert_eq!(binds_for(&page, "ct/dicom"), ["address"]);
    let opened = person.open_grant(&moat, "ct/dicom", 5, "address");
    assert_eq!(opened["granted_service"], "dicom", "{opened}");
    assert_eq!(
        opened["service"], "web",
        "asked for on the web service: {opened}"
    );
    let mut line = line_from("127.0.0.2", moat.addr("dicom"));
    line.assert_echoes("through a grant from the web UI's pages\n");
    assert_no_grant(&moat, "127.0.0.3", moat.addr("dicom"));
    // The web UI itself saw none of it.
    assert_eq!(web_ui.count(), 0, "{:?}", web_ui.seen());
}

#[test]
fn the_portal_refuses_grants_it_must_not_open_and_a_person_ends_their_own() {
    tools();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let echo = echo_upstream();
    let alice = Account::new("alice", &["biomed"]);
    let carol = Account::new("carol", &["ops"]);
    write_users(&ws, &[&alice, &carol]);
    let devices = [
        ct_device(echo.addr, ""),
        device(
            "xr",
            "X-ray",
            "Radiology 1",
            None,
            &grant_service_allowing("xr-dicom", echo.addr, "127.0.0.5", BIOMED, None),
        ),
        portal_device(&ws, false),
    ]
    .concat();
    let text = grants_config(&auth_table(""), &devices);
    let moat = start_grants(&ws, &clock, &text, &["dicom", "xr-dicom", "portal"]);
    let portal = moat.addr("portal");
    let alice_at_2 = PortalUser::sign_in(&ws, portal, &alice, "127.0.0.2", T0);

    // The X-ray admits only 127.0.0.5: the page offers no form for it.
    let home = alice_at_2.home();
    assert_eq!(
        input_values(&home.body, "service"),
        ["ct/dicom"],
        "{home:?}"
    );

    let refusals: [(&str, &str, &str, u16); 7] = [
        ("ct/dicom", "31", "address", 400), // over max_grant = 30m
        ("ct/dicom", "0", "address", 400),
        ("ct/dicom", "ten", "address", 400),
        ("ct/dicom", "10", "certificate", 400), // no certificate
        ("ct/dicom", "10", "fingerprint", 400),
        ("xr/xr-dicom", "10", "address", 403), // not in its allow list
        ("ct/nothing", "10", "address", 400),
    ];
    for (service, minutes, bind, status) in refusals {
        let r = alice_at_2.open(service, minutes, bind);
        assert_eq!(
            r.status, status,
            "{service} for {minutes} min bound to {bind}: {r:?}"
        );
        assert!(!r.body.trim().is_empty(), "a refusal says why: {r:?}");
    }
    // A forged token, and a good token from another origin.
    let fields = |csrf: &str| {
        [
            ("csrf", csrf.to_string()),
            ("service", "ct/dicom".to_string()),
            ("minutes", "10".to_string()),
            ("bind", "address".to_string()),
        ]
    };
    let forged = fields("forged-token");
    let forged: Vec<(&str, &str)> = forged.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = alice_at_2.post("/.moat/grants", &forged, &[]);
    assert_eq!(r.status, 403, "{r:?}");
    let good = fields(&alice_at_2.csrf());
    let good: Vec<(&str, &str)> = good.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = alice_at_2.post(
        "/.moat/grants",
        &good,
        &["-H", "Origin: https://evil.example"],
    );
    assert_eq!(r.status, 403, "{r:?}");
    // No session at all: sent to sign in, nothing opened.
    let stranger = Agent::new(&ws, portal, "stranger").with_source("127.0.0.2");
    let r = stranger.post_form("/.moat/grants", &good, &[]);
    assert!(
        r.status == 303 || r.status == 302 || r.status == 401,
        "{r:?}"
    );

    // carol (ops) is not admitted to the CT: not listed, and refused.
    let carol_at_3 = PortalUser::sign_in(&ws, portal, &carol, "127.0.0.3", T0);
    let page = carol_at_3.home();
    assert!(input_values(&page.body, "service").is_empty(), "{page:?}");
    let r = carol_at_3.open("ct/dicom", "10", "address");
    assert_eq!(r.status, 403, "{r:?}");

    // None of that opened anything.
    assert!(moat.events("grant_opened").is_empty());
    assert!(admin_grants(&moat).is_empty());
    assert_no_grant(&moat, "127.0.0.2", moat.addr("dicom"));
    assert_no_grant(&moat, "127.0.0.3", moat.addr("dicom"));

    // alice opens one; carol cannot end it; alice can.
    let opened = alice_at_2.open_grant(&moat, "ct/dicom", 5, "address");
    let id = id_of(&opened);
    let mut line = line_from("127.0.0.2", moat.addr("dicom"));
    line.assert_echoes("open\n");
    let r = carol_at_3.end(&id);
    assert_eq!(r.status, 404, "{r:?}");
    assert!(admin_grant(&moat, &id).is_some());
    let r = alice_at_2.end(&id);
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location"), Some("/.moat/"), "{r:?}");
    let e = ended(&moat, &id);
    assert_eq!(e["reason"], "revoked_by_user", "{e}");
    assert_eq!(e["user"], "alice", "{e}");
    assert_cut(&moat, &mut line);
    assert_no_grant(&moat, "127.0.0.2", moat.addr("dicom"));
    assert!(input_values(&alice_at_2.home().body, "id").is_empty());
}

#[test]
fn an_expired_grant_cuts_its_live_connections_and_refuses_new_ones() {
    let f = ct("close");
    let opened = f.grant(&f.alice, "127.0.0.2", 1);
    let id = id_of(&opened);
    let until = opened["until"].as_u64().unwrap();
    assert_eq!(until, T0 + 60, "{opened}");
    let mut live = f.live("127.0.0.2");

    // One second before the end it still admits new connections.
    f.clock.set(until - 1);
    let mut late = f.live("127.0.0.2");

    // Past `until`: both are cut, new ones refused.
    f.clock.set(until + 1);
    let e = ended(&f.moat, &id);
    assert_eq!(e["reason"], "expired", "{e}");
    assert_eq!(e["user"], "alice", "{e}");
    assert_eq!(e["device"], "ct", "{e}");
    assert_eq!(e["service"], "dicom", "{e}");
    assert_cut(&f.moat, &mut live);
    assert_cut(&f.moat, &mut late);
    assert_no_grant(&f.moat, "127.0.0.2", f.dicom());
    assert!(admin_grants(&f.moat).is_empty());
    assert_eq!(f.echo.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn an_expired_grant_on_a_drain_service_lets_live_connections_finish() {
    let f = ct("drain");
    let opened = f.grant(&f.alice, "127.0.0.2", 1);
    let id = id_of(&opened);
    let until = opened["until"].as_u64().unwrap();
    let mut live = f.live("127.0.0.2");

    f.clock.set(until + 1);
    let e = ended(&f.moat, &id);
    assert_eq!(e["reason"], "expired", "{e}");
    // New connections are refused at once...
    assert_no_grant(&f.moat, "127.0.0.2", f.dicom());
    // ...while the live one goes on, and ends when the client ends it.
    live.assert_echoes("still working after the grant ended\n");
    live.assert_echoes("and still\n");
    assert_no_event_for(&f.moat, "connection_revoked", live.local);
    live.s.shutdown(std::net::Shutdown::Write).unwrap();
    live.wait_eof();
    let closed = f.moat.wait_for_client("connection_closed", live.local);
    assert_ne!(closed["closed_by"], "revoked", "{closed}");
    assert_no_event_for(&f.moat, "connection_revoked", live.local);
}

#[test]
fn ops_revoke_grants_with_moat_grants_and_the_admin_api_and_live_connections_end_within_a_second() {
    let f = ct("close");
    let a = id_of(&f.grant(&f.alice, "127.0.0.2", 30));
    let b = id_of(&f.grant(&f.bob, "127.0.0.3", 30));
    let mut alice_line = f.live("127.0.0.2");
    let mut bob_line = f.live("127.0.0.3");

    // `moat grants list` shows both.
    let out = moat_grants(&f.moat, &["list"]);
    let listed = text(&out);
    assert!(out.status.success(), "{listed}");
    for shown in [
        a.as_str(),
        b.as_str(),
        "alice",
        "bob",
        "ct/dicom",
        "127.0.0.2",
    ] {
        assert!(listed.contains(shown), "{shown:?} not in: {listed}");
    }

    // `moat grants revoke A`: alice's connection ends within a second of
    // the command's return.
    let out = moat_grants(&f.moat, &["revoke", &a]);
    let returned = Instant::now();
    assert!(out.status.success(), "{}", text(&out));
    alice_line.wait_eof();
    let took = returned.elapsed();
    assert!(took < CUT_WITHIN, "cut {took:?} after the revoke returned");
    assert!(text(&out).contains(&a), "{}", text(&out));
    let e = ended(&f.moat, &a);
    assert_eq!(e["reason"], "revoked_by_ops", "{e}");
    assert_eq!(e["user"], "alice", "{e}");
    let revoked = f
        .moat
        .wait_for_client("connection_revoked", alice_line.local);
    assert_eq!(revoked["reason"], "grant_ended", "{revoked}");
    assert_no_grant(&f.moat, "127.0.0.2", f.dicom());

    // The list no longer shows it; bob's grant and connection are intact.
    let listed = text(&moat_grants(&f.moat, &["list"]));
    assert!(!listed.contains(&a), "{listed}");
    assert!(listed.contains(&b), "{listed}");
    bob_line.assert_echoes("bob is still connected\n");
    assert_no_event_for(&f.moat, "connection_revoked", bob_line.local);

    // DELETE /grants/B on the admin API does the same.
    let (status, body) = admin_delete(&f.moat, &format!("/grants/{b}"));
    let returned = Instant::now();
    assert_eq!(status, 200, "{body}");
    bob_line.wait_eof();
    let took = returned.elapsed();
    assert!(took < CUT_WITHIN, "cut {took:?} after DELETE answered");
    let g = deleted_grant(&body);
    assert_eq!(g["id"], b.as_str(), "{body}");
    assert_eq!(g["user"], "bob", "{body}");
    assert_eq!(ended(&f.moat, &b)["reason"], "revoked_by_ops");

    // Gone: a second DELETE is 404, a revoke of it exits 1.
    let (status, body) = admin_delete(&f.moat, &format!("/grants/{b}"));
    assert_eq!(status, 404, "{body}");
    let out = moat_grants(&f.moat, &["revoke", &b]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let listed = text(&moat_grants(&f.moat, &["list"]));
    assert!(!listed.contains(&a) && !listed.contains(&b), "{listed}");
    assert!(admin_grants(&f.moat).is_empty());
    assert_eq!(
        f.moat
            .events("grant_ended")
            .iter()
            .filter(|e| e["reason"] == "revoked_by_ops")
            .count(),
        2
    );
}

#[test]
fn a_certificate_grant_admits_that_key_from_any_address_and_no_other_key() {
    tools();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let echo = echo_upstream();
    let alice = Account::new("alice", &["biomed"]);
    write_users(&ws, &[&alice]);
    let mtls = mtls_table(&ws);
    // "raw" is TLS too, but asks for no client certificate: a
    // certificate grant would mean nothing there.
    let services = grant_service("dicom", echo.addr, BIOMED, Some(&mtls))
        + &grant_service("raw", echo.addr, BIOMED, Some(&ws.tls_table()));
    let devices = device("ct", "CT", "Radiology 2", None, &services) + &portal_device(&ws, true);
    let text = grants_config(&auth_table(""), &devices);
    let moat = start_grants(&ws, &clock, &text, &["dicom", "raw", "portal"]);
    let dicom = moat.addr("dicom");
    let (other_cert, other_key) = other_client_cert(&ws);
    let mine = (
        ws.certs.client_cert.as_path(),
        ws.certs.client_key.as_path(),
    );

    // Signed in from 127.0.0.2, without a certificate on the connection:
    // only the address is offered, and a certificate grant is refused.
    let bare = PortalUser::sign_in(&ws, moat.addr("portal"), &alice, "127.0.0.2", T0);
    let page = bare.home().body;
    assert_eq!(binds_for(&page, "ct/dicom"), ["address"]);
    assert_eq!(binds_for(&page, "ct/raw"), ["address"]);
    let r = bare.open("ct/dicom", "10", "certificate");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(moat.events("grant_opened").is_empty());

    // With the dev client certificate (curl --cert): "my certificate".
    let with_cert = bare.without_cert().with_cert(mine.0, mine.1);
    let page = with_cert.home().body;
    assert_eq!(binds_for(&page, "ct/dicom"), ["address", "certificate"]);
    assert_eq!(binds_for(&page, "ct/raw"), ["address"]);
    let r = with_cert.open("ct/raw", "10", "certificate");
    assert_eq!(
        r.status, 400,
        "a certificate grant where none is required: {r:?}"
    );
    let opened = with_cert.open_grant(&moat, "ct/dicom", 10, "certificate");
    let spki = spki_sha256(mine.0);
    assert_eq!(
        opened["binding"],
        json!({ "certificate_spki_sha256": spki }),
        "{opened}"
    );
    let id = id_of(&opened);
    let g = admin_grant(&moat, &id).expect("the grant is listed");
    assert_eq!(
        g["binding"],
        json!({ "certificate_spki_sha256": spki }),
        "{g}"
    );

    // That certificate is admitted from 127.0.0.4, an address that never
    // signed in (openssl s_client -bind).
    let mut granted = s_client(&ws, "granted", "127.0.0.4", dicom, Some(mine));
    granted.send("C-ECHO from .4\n");
    granted.wait_output("C-ECHO from .4\n");
    let allowed = wait_for("connection_allowed from 127.0.0.4", || {
        events_from(&moat, "connection_allowed", "dicom", "127.0.0.4").pop()
    });
    assert_eq!(
        allowed["principal"]["name"],
        moat::certs::CLIENT_NAME,
        "{allowed}"
    );

    // Another certificate from the same CA, from the very address that
    // signed in: the handshake succeeds, the key has no grant, refused.
    let mut other = s_client(
        &ws,
        "other",
        "127.0.0.2",
        dicom,
        Some((&other_cert, &other_key)),
    );
    other.send("C-ECHO from .2\n");
    other.wait_closed();
    assert!(
        !other.output().contains("C-ECHO"),
        "another key got through: {:?}",
        other.output()
    );
    let denied = wait_for("connection_denied from 127.0.0.2", || {
        events_from(&moat, "connection_denied", "dicom", "127.0.0.2").pop()
    });
    assert_eq!(denied["reason"], "no_grant", "{denied}");
    assert!(events_from(&moat, "connection_allowed", "dicom", "127.0.0.2").is_empty());
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn dicom_store_through_a_certificate_grant_arrives_byte_identical() {
    tools();
    for tool in ["storescu", "storescp", "dump2dcm"] {
        require(tool);
    }
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let scp = start_storescp(&ws);
    let alice = Account::new("alice", &["biomed"]);
    write_users(&ws, &[&alice]);
    let mtls = mtls_table(&ws);
    let devices = device(
        "pacs",
        "PACS archive",
        "Data centre",
        Some("2040-01-01"),
        &grant_service("dicom", scp.addr, BIOMED, Some(&mtls)),
    ) + &portal_device(&ws, true);
    let text = grants_config(&auth_table(""), &devices);
    let moat = start_grants(&ws, &clock, &text, &["dicom", "portal"]);
    let port = moat.addr("dicom").port().to_string();
    let dataset = make_dataset(&ws);
    let p = |p: &std::path::Path| p.to_str().unwrap().to_string();
    // dcmtk cannot choose its source address: the grant is bound to the
    // workstation's certificate, which storescu shows (+tls key cert).
    let (key, cert, ca) = (
        p(&ws.certs.client_key),
        p(&ws.certs.client_cert),
        p(&ws.certs.ca),
    );
    let storescu = |log: &str| {
        run_tool(
            &ws,
            log,
            "storescu",
            &[
                "+tls",
                &key,
                &cert,
                "+cf",
                &ca,
                "-f",
                "-xe",
                "127.0.0.1",
                &port,
                dataset.to_str().unwrap(),
            ],
        )
    };

    // Without a grant: refused before TLS, nothing stored.
    let (status, log) = storescu("storescu-no-grant");
    assert!(!status.success(), "stored without a grant: {log}");
    let denied = wait_for("connection_denied", || {
        events_from(&moat, "connection_denied", "dicom", "127.0.0.1").pop()
    });
    assert_eq!(denied["reason"], "no_grant", "{denied}");
    assert!(
        denied.get("tls").is_none(),
        "TLS work before the refusal: {denied}"
    );
    assert!(scp.received().is_empty());

    // alice signs in on the portal with the workstation's certificate and
    // opens the PACS for it.
    let person = PortalUser::sign_in(&ws, moat.addr("portal"), &alice, "127.0.0.1", T0)
        .with_cert(&ws.certs.client_cert, &ws.certs.client_key);
    let opened = person.open_grant(&moat, "pacs/dicom", 15, "certificate");
    assert!(
        opened["binding"]["certificate_spki_sha256"].is_string(),
        "{opened}"
    );

    let (status, log) = storescu("storescu-granted");
    assert!(
        status.success(),
        "storescu through the grant failed: {log}\nmoat: {}\nstorescp: {}",
        moat.stderr(),
        scp.log()
    );
    scp.assert_stored_only(&dataset);
    let allowed = wait_for("connection_allowed", || {
        events_from(&moat, "connection_allowed", "dicom", "127.0.0.1").pop()
    });
    assert_eq!(allowed["principal"]["kind"], "certificate", "{allowed}");
    assert_eq!(
        allowed["principal"]["name"],
        moat::certs::CLIENT_NAME,
        "{allowed}"
    );
    assert!(
        allowed["tls"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("TLSv1.")),
        "{allowed}"
    );
}

#[test]
fn disabling_removing_or_regrouping_a_user_ends_their_grants_and_cuts_their_connections() {
    let carol = Account::new("carol", &["biomed"]);
    let dave = Account::new("dave", &["biomed"]);
    let f = ct_with(&[&carol, &dave], |ws, echo| ct_config(ws, echo, ""));
    let (alice, bob) = (f.alice.clone(), f.bob.clone());
    let people = [
        (&alice, "127.0.0.2"),
        (&bob, "127.0.0.3"),
        (&carol, "127.0.0.4"),
        (&dave, "127.0.0.5"),
    ];
    let mut ids = Vec::new();
    let mut lines = Vec::new();
    for (who, from) in people {
        ids.push(id_of(&f.grant(who, from, 30)));
        lines.push(f.live(from));
    }

    // One atomic rewrite of the users file: alice disabled, bob gone,
    // carol moved to ops; dave untouched. moat reloads it by itself.
    let mut carol_in_ops = carol.clone();
    carol_in_ops.groups = vec!["ops".to_string()];
    write_users(&f.ws, &[&alice.clone().disabled(), &carol_in_ops, &dave]);
    wait_reloads(&f.moat, 1);

    for (i, reason) in ["user_disabled", "user_removed", "user_not_authorized"]
        .into_iter()
        .enumerate()
    {
        let e = ended(&f.moat, &ids[i]);
        assert_eq!(e["reason"], reason, "{e}");
        assert_eq!(e["user"], people[i].0.name.as_str(), "{e}");
        assert_cut(&f.moat, &mut lines[i]);
        assert_no_grant(&f.moat, people[i].1, f.dicom());
    }
    // dave keeps his grant and his connection, and may connect anew.
    lines[3].assert_echoes("dave is still here\n");
    assert_no_event_for(&f.moat, "connection_revoked", lines[3].local);
    f.live("127.0.0.5");
    let open = admin_grants(&f.moat);
    assert_eq!(open.len(), 1, "{open:#?}");
    assert_eq!(open[0]["id"], ids[3].as_str());
    assert!(
        !f.moat
            .events("grant_ended")
            .iter()
            .any(|e| e["grant_id"] == ids[3].as_str()),
        "dave's grant ended"
    );
}

#[test]
fn a_break_glass_code_opens_one_short_grant_once_and_is_audited_high() {
    tools();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let echo = echo_upstream();
    let alice = Account::new("alice", &["biomed"]);
    let carol = Account::new("carol", &["ops"]);
    write_users(&ws, &[&alice, &carol]);
    let codes_file = ws.path("breakglass.toml");
    let codes = issue_codes(&codes_file, "alice", 2);
    assert_ne!(codes[0], codes[1]);
    let carols = issue_codes(&codes_file, "carol", 1);
    let devices = ct_device(echo.addr, "break_glass = true\nbreak_glass_grant = \"5m\"")
        + &portal_device(&ws, false);
    let auth = auth_table("break_glass_file = \"breakglass.toml\"");
    let config = grants_config(&auth, &devices);
    let moat = start_grants(&ws, &clock, &config, &["dicom", "portal"]);
    let portal = moat.addr("portal");
    let dicom = moat.addr("dicom");
    assert_no_grant(&moat, "127.0.0.2", dicom);

    // alice's phone is flat: password and a sealed code, no TOTP code.
    let agent = Agent::new(&ws, portal, "glass").with_source("127.0.0.2");
    let use_code_as = |agent: &Agent, who: &Account, password: &str, code: &str| {
        let form = break_glass_form(agent);
        let services = input_values(&form.body, "service");
        assert!(
            services.is_empty() || services.contains(&"ct/dicom".to_string()),
            "{form:?}"
        );
        assert!(form.body.contains("ct/dicom"), "{form:?}");
        let csrf = support::mfa::input(&form.body, "csrf").unwrap();
        agent.post_form(
            "/.moat/break-glass",
            &[
                ("username", who.name.as_str()),
                ("password", password),
                ("code", code),
                ("service", "ct/dicom"),
                ("bind", "address"),
                ("csrf", &csrf),
            ],
            &[],
        )
    };
    let use_code = |code: &str| use_code_as(&agent, &alice, &alice.password, code);
    let r = use_code(&codes[0]);
    assert_eq!(r.status, 200, "{r:?}");
    let page = r.body.to_lowercase();
    assert!(
        page.contains("emergency access") && page.contains("open") && page.contains("until"),
        "{r:?}"
    );
    assert!(page.contains("127.0.0.2"), "{r:?}");

    // The grant admits her address.
    let mut line = line_from("127.0.0.2", dicom);
    line.assert_echoes("emergency C-STORE\n");
    assert_no_grant(&moat, "127.0.0.3", dicom);

    // Audited as high severity, with the grant it opened.
    let used = moat.wait_event("break_glass_used", |_| true);
    assert_eq!(used["severity"], "high", "{used}");
    assert_eq!(used["user"], "alice", "{used}");
    assert_eq!(used["granted_device"], "ct", "{used}");
    assert_eq!(used["granted_service"], "dicom", "{used}");
    let id = id_of(&used);
    let opened = moat.wait_event("grant_opened", |e| e["grant_id"] == id.as_str());
    assert_eq!(opened["break_glass"], true, "{opened}");
    let g = admin_grant(&moat, &id).expect("listed");
    assert_eq!(g["break_glass"], true, "{g}");
    let lasts = g["until"].as_u64().unwrap() - g["opened_at"].as_u64().unwrap();
    assert!(
        lasts > 0 && lasts <= 300,
        "a break-glass grant of {lasts} s"
    );

    // The same code again: refused with the one generic message.
    let again = use_code(&codes[0]);
    assert_eq!(again.status, 401, "{again:?}");
    assert!(
        again
            .body
            .to_lowercase()
            .contains("wrong username, password or"),
        "{again:?}"
    );
    // Her other code with a wrong password: refused, and not used up.
    let r = use_code_as(&agent, &alice, "not-her-password", &codes[1]);
    assert_eq!(r.status, 401, "{r:?}");
    // carol has a code of her own, but the CT does not admit her (ops).
    let carol_agent = Agent::new(&ws, portal, "glass-carol").with_source("127.0.0.3");
    let r = use_code_as(&carol_agent, &carol, &carol.password, &carols[0]);
    assert_eq!(r.status, 401, "{r:?}");
    assert_no_grant(&moat, "127.0.0.3", dicom);
    assert_eq!(moat.events("grant_opened").len(), 1);
    assert_eq!(moat.events("break_glass_used").len(), 1);
    // The file records exactly the one use.
    let out = std::process::Command::new(support::moat_bin())
        .arg("breakglass")
        .arg("--codes")
        .arg(&codes_file)
        .arg("list")
        .output()
        .unwrap();
    let listed = text(&out);
    assert!(out.status.success(), "{listed}");
    let line_of = |user: &str| {
        listed
            .lines()
            .find(|l| l.starts_with(&format!("{user}:")))
            .unwrap_or_else(|| panic!("no {user} in: {listed}"))
            .to_string()
    };
    assert!(line_of("alice").contains("1 unused"), "{listed}");
    assert!(line_of("carol").contains("1 unused"), "{listed}");
    // The codes never reach the audit trail or the log.
    assert_no_secrets(&moat, &[&codes[0], &codes[1], &carols[0], &alice.password]);

    // It is a grant like any other: it expires.
    clock.set(g["until"].as_u64().unwrap() + 1);
    assert_eq!(ended(&moat, &id)["reason"], "expired");
    assert_cut(&moat, &mut line);
}

/// The CT and the portal, with the CT's DICOM port leading to `upstream`
/// and the portal device called `portal_name`.
fn reload_config(ws: &Workspace, upstream: SocketAddr, portal_name: &str) -> String {
    let devices = ct_device(upstream, "") + &portal_device_named(ws, portal_name, false);
    grants_config(&auth_table(""), &devices)
}

#[test]
fn a_grant_survives_an_unrelated_reload_and_ends_when_its_service_changes() {
    let moved = echo_upstream();
    let f = ct_with(&[], |ws, echo| reload_config(ws, echo, "moat portal"));
    let id = id_of(&f.grant(&f.alice, "127.0.0.2", 30));
    let mut live = f.live("127.0.0.2");
    let config = f.ws.path("moat.toml");

    // Something unrelated changes: the portal device's name.
    write_atomically(
        &config,
        &reload_config(&f.ws, f.echo.addr, "moat portal, ward 3"),
        0o644,
    );
    wait_reloads(&f.moat, 1);
    live.assert_echoes("after an unrelated reload\n");
    f.live("127.0.0.2");
    assert!(admin_grant(&f.moat, &id).is_some(), "the grant was dropped");
    assert!(f.moat.events("grant_ended").is_empty());
    assert_no_event_for(&f.moat, "connection_revoked", live.local);

    // The CT's DICOM port now leads elsewhere: the grant was for the old
    // device, so it ends, and its connection with it.
    write_atomically(
        &config,
        &reload_config(&f.ws, moved.addr, "moat portal, ward 3"),
        0o644,
    );
    wait_reloads(&f.moat, 2);
    let e = ended(&f.moat, &id);
    assert_eq!(e["reason"], "policy_changed", "{e}");
    // Cut: for the grant's end, or (the reload's own check, which may
    // come first) because the service changed under it.
    let revoked = f.moat.wait_for_client("connection_revoked", live.local);
    live.wait_eof();
    assert!(
        revoked["reason"] == "grant_ended" || revoked["reason"] == "service_changed",
        "cut, but for {}: {revoked}",
        revoked["reason"]
    );
    assert_no_grant(&f.moat, "127.0.0.2", f.dicom());
    assert!(admin_grants(&f.moat).is_empty());
    assert_eq!(moved.accepted.load(Ordering::SeqCst), 0);
}
