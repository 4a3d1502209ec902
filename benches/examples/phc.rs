//! Prints the argon2id PHC string of a password, with moat's parameters
//! (`moat::auth::password::hash`), and a new base32 TOTP secret: what a
//! users file needs. `benches/load/mfa.sh` embeds one made this way.
//!
//!     cargo run -p moat-benches --example phc -- PASSWORD

fn main() {
    let Some(password) = std::env::args().nth(1) else {
        eprintln!("usage: phc PASSWORD");
        std::process::exit(2);
    };
    println!("password = \"{}\"", moat::auth::password::hash(&password));
    println!(
        "totp_secret = \"{}\"",
        moat::auth::totp::to_base32(&moat::auth::totp::generate_secret())
    );
}
