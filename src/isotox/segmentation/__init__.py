"""Stage 3: PET tumour volumes, the boost and hypoxic sub-volumes, target margins, organs at risk."""
