//! AF_XDP ports and worker threads (feature `afxdp`).
