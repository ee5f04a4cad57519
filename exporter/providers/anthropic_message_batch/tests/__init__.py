"""The tests of this provider alone (`anthropic_message_batch`): its parser and lister against
the published answers in ../fixtures/, its part of the simulator end to end, and the official
`anthropic` SDK as a client of that part."""
