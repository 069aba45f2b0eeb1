//! AFL++ binary of the `parse` target (see `meshpath_fuzz::parse`).

fn main() {
    afl::fuzz!(|data: &[u8]| meshpath_fuzz::parse::run(data));
}
