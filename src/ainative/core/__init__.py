"""Platform-neutral logic: classes, rules, classification, the change journal, the engine."""
