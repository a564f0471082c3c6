"""Run directories -> figures and documents. Reads only the plain records that training wrote."""
