//! Load: stress-ng, dbench, fio, tar/rm loops and a mixed soak.
