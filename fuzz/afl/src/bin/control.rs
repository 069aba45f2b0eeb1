//! AFL++ binary of the `control` target (see `meshpath_fuzz::control`).

fn main() {
    afl::fuzz!(|data: &[u8]| meshpath_fuzz::control::run(data));
}
