package host

// SetEnterHook makes f run in every call the host admits (nil: none).
func SetEnterHook(f func()) {
	if f == nil {
		testHookEnter.Store(nil)
		return
	}
	testHookEnter.Store(&f)
}
