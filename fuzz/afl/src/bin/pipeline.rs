//! AFL++ binary of the `pipeline` target (see `meshpath_fuzz::pipeline`).

fn main() {
    afl::fuzz!(|data: &[u8]| meshpath_fuzz::pipeline::run(data));
}
