package proxy

// SetAfterMiss makes find call f each time its first lookup in the
// reference graph misses, before it looks at the last recording pass.
func (s *Server) SetAfterMiss(f func()) { s.afterMiss = f }
