// glibc 2.32+ exports __libc_single_threaded, and libstdc++'s inline code reads it (to skip
// atomic reference counting) when the build machine's headers declare it. A module for an older
// glibc (cmake/GlibcFloor.cmake) gets this local stand-in instead: 0 says "maybe several
// threads", so reference counts always use atomics, which is correct everywhere.
extern "C" {
__attribute__((visibility("hidden"))) char __libc_single_threaded = 0;
}
