//! AFL++ binary of the `wireguard` target (see `meshpath_fuzz::wireguard`).

fn main() {
    afl::fuzz!(|data: &[u8]| meshpath_fuzz::wireguard::run(data));
}
