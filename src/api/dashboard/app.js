// The dashboard's script (replaced by the real one).
