//! Arbitrary bytes as a `.npy` and as a `.npz`: an error or a matrix whose
//! rows can all be read, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

use clipcov::formats::npy::NpyMatrix;
use clipcov::formats::npz::Npz;

fn read_all(m: &NpyMatrix) {
    let rows = m.rows().min(4096);
    if rows > 0 && m.cols() > 0 && m.cols() < 1 << 16 {
        let _ = m.rows_array(0, rows);
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("clipcov-fuzz-npy-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let npy = dir.join("x.npy");
    std::fs::write(&npy, data).unwrap();
    if let Ok(m) = NpyMatrix::open(&npy) {
        read_all(&m);
    }
    let npz = dir.join("x.npz");
    std::fs::write(&npz, data).unwrap();
    if let Ok(mut z) = Npz::open(&npz) {
        for key in ["l14_img", "l14_txt", "b32_img", "b32_txt"] {
            if let Ok(m) = z.matrix(&npz, key) {
                read_all(&m);
            }
        }
    }
});
