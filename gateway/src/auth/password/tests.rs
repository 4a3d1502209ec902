use super::*;

fn params_of(phc: &str) -> (u32, u32, u32) {
    let parsed = PasswordHash::new(phc).unwrap();
    let p = Params::try_from(&parsed).unwrap();
    (p.m_cost(), p.t_cost(), p.p_cost())
}

#[test]
fn round_trip() {
    let h = hash("correct horse battery staple");
    assert!(h.starts_with("$argon2id$v=19$"), "{h}");
    assert!(verify(&h, "correct horse battery staple"));
}

#[test]
fn wrong_password_is_refused() {
    let h = hash("correct horse battery staple");
    assert!(!verify(&h, "correct horse battery stapl"));
    assert!(!verify(&h, ""));
}

#[test]
fn each_hash_has_its_own_salt() {
    assert_ne!(hash("same password"), hash("same password"));
}

#[test]
fn malformed_hashes_never_match() {
    for phc in [
        "",
        "password",
        "$argon2id$",
        "$argon2id$v=19$m=19456,t=2,p=1$",
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQxMjM0NTY3OA",
        "$argon2id$v=19$m=19456,t=2,p=1$!!!!$????",
        "$argon2id$v=19$m=x,t=2,p=1$c29tZXNhbHQxMjM0NTY3OA$aGFzaA",
    ] {
        assert!(!verify(phc, ""), "{phc:?}");
        assert!(!verify(phc, "password"), "{phc:?}");
        assert!(check_phc(phc).is_err(), "{phc:?}");
    }
}

#[test]
fn other_argon2_variants_are_refused() {
    // Valid hashes of "password" made with argon2i and argon2d: the right
    // password, but not argon2id, so never a match.
    let salt = SaltString::generate(&mut OsRng);
    for alg in [argon2::Algorithm::Argon2i, argon2::Algorithm::Argon2d] {
        let a = Argon2::new(alg, argon2::Version::V0x13, Params::default());
        let phc = a.hash_password(b"password", &salt).unwrap().to_string();
        assert!(a
            .verify_password(b"password", &PasswordHash::new(&phc).unwrap())
            .is_ok());
        assert!(!verify(&phc, "password"), "{phc}");
    }
    // argon2id, but version 16.
    let a = Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x10,
        Params::default(),
    );
    let phc = a.hash_password(b"password", &salt).unwrap().to_string();
    assert!(!verify(&phc, "password"), "{phc}");
    // Another PHC algorithm altogether.
    assert!(!verify(
        "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E",
        "password"
    ));
}

#[test]
fn absurd_costs_are_refused() {
    let phc = "$argon2id$v=19$m=4194304,t=2,p=1$c29tZXNhbHQxMjM0NTY3OA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA";
    assert!(check_phc(phc).unwrap_err().contains("too high"));
    assert!(!verify(phc, "password"));
}

#[test]
fn dummy_hash_costs_the_same_as_a_real_one() {
    let real = hash("correct horse battery staple");
    let dummy = dummy_hash();
    assert_eq!(params_of(&real), params_of(&dummy));
    assert_eq!(params_of(&real), (19456, 2, 1));
    assert!(check_phc(&dummy).is_ok());
    assert!(!verify(&dummy, ""));
    assert!(!verify(&dummy, "correct horse battery staple"));
}

#[test]
fn the_dummy_for_unknown_users_has_the_costs_of_the_users_hashes() {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(8192, 3, 1, None).unwrap();
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    let reference =
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(b"a user's password", &salt)
            .unwrap()
            .to_string();
    let dummy = dummy_like(Some(&reference));
    assert_eq!(costs(&dummy), "m=8192,t=3,p=1");
    assert_eq!(costs(&dummy), costs(&reference));
    assert!(!verify(&dummy, "a user's password"));
    // No usable reference: the defaults, as `hash` makes.
    assert_eq!(costs(&dummy_like(None)), costs(&hash("x")));
    assert_eq!(costs(&dummy_like(Some("not a hash"))), costs(&hash("x")));
}
