//! AFL++ binary of the `tunnel` target (see `meshpath_fuzz::tunnel`).

fn main() {
    afl::fuzz!(|data: &[u8]| meshpath_fuzz::tunnel::run(data));
}
