"""Fleet repo sources: files of a working directory now, Git commits (pygit2) as the controller grows."""
