"""Complete user tasks (`hpo.UserTask` factories) with their study files; see README.md."""
