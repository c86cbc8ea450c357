"""What a model is: tasks, networks, cards, export and the model store."""
